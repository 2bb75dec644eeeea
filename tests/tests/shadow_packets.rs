//! Shadow capture through `BPF_PROG_TEST_RUN`: which flows the real
//! programs sample, the ring records they write for them (checked field by
//! field against the frames sent, built with the fixture builder), and that
//! capture never changes what happens to a packet. Needs root.

use std::net::SocketAddr;

use bluegreen::shadow::{
    capture::{self, Origin, Record},
    reassembly::{AbandonReason, FlowEvent, Limits, Reassembler},
};
use bluegreen_common::{
    COLOR_BLUE, COLOR_GREEN, FlowKey, MAX_SHADOW_PAYLOAD, SHADOW_FROM_CLIENT, SHADOW_FROM_LIVE,
    SHADOW_REPLY_PREFIX, ServiceState, ShadowCount, ShadowHeader, ShadowSettings, flow_hash,
    shadow_sample_below, shadow_sample_point,
};
use bluegreen_testbed::{
    kernel::{TC_ACT_OK, TestDataplane, XDP_PASS, flow_key, service_key},
    packet::{Frame, PROTO_TCP, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, Transport, internet_checksum},
};

const SLOT: u32 = 7;
const SESSION: u32 = 7;
const DATA: u8 = TCP_ACK | TCP_PSH;
const COUNTS: usize = ShadowCount::COUNT as usize;

/// Every flow of the service sampled.
fn every_flow(session: u32) -> ShadowSettings {
    ShadowSettings {
        sample_below: shadow_sample_below(10_000),
        session,
    }
}

/// A TCP service on [`SLOT`] (VIP, a blue and a green backend), live on
/// blue, and its client, in one address family.
#[derive(Clone, Copy, Debug)]
struct Fixture {
    client: SocketAddr,
    vip: SocketAddr,
    blue: SocketAddr,
    green: SocketAddr,
}

impl Fixture {
    fn new(ipv6: bool) -> Self {
        let at = |addr: &str, port| SocketAddr::new(addr.parse().unwrap(), port);
        let (client, vip, blue, green) = if ipv6 {
            ("2001:db8:c::7", "2001:db8::10", "fd00:1::1", "fd00:2::1")
        } else {
            ("198.51.100.7", "192.0.2.10", "10.0.1.1", "10.0.2.1")
        };
        // Backend ports differ from the VIP's, so a missed rewrite shows.
        Self {
            client: at(client, 40000),
            vip: at(vip, 80),
            blue: at(blue, 8080),
            green: at(green, 8081),
        }
    }

    fn v4() -> Self {
        Self::new(false)
    }

    /// A fresh dataplane with the service and `shadow` on its slot.
    fn dataplane(&self, shadow: ShadowSettings) -> TestDataplane {
        let mut dataplane = TestDataplane::new();
        let state = ServiceState {
            generation: 1,
            counter_slot: SLOT,
            active: COLOR_BLUE,
            previous: COLOR_GREEN,
            weight: 0,
            flags: 0,
            pools: Default::default(),
        }
        .with_forced_color(COLOR_BLUE);
        dataplane.insert_service(
            service_key(self.vip, PROTO_TCP),
            state,
            [self.blue, self.green],
        );
        dataplane.set_shadow(SLOT, shadow);
        dataplane
    }

    /// The client on another source port: another connection.
    fn port(&self, port: u16) -> Self {
        Self {
            client: SocketAddr::new(self.client.ip(), port),
            ..*self
        }
    }

    fn key(&self) -> FlowKey {
        flow_key(self.client, self.vip, PROTO_TCP)
    }

    fn sample_point(&self) -> u32 {
        shadow_sample_point(flow_hash(&self.key()))
    }

    fn syn(&self, isn: u32) -> Frame {
        Frame::tcp(self.client, self.vip, TCP_SYN)
            .seq(isn)
            .payload(b"")
    }

    fn data(&self, seq: u32, payload: &[u8]) -> Frame {
        Frame::tcp(self.client, self.vip, DATA)
            .seq(seq)
            .payload(payload)
    }

    /// Bytes `from..to` of a stream whose ISN is `isn`, as one segment.
    fn piece(&self, isn: u32, stream: &[u8], from: usize, to: usize) -> Frame {
        self.data(isn.wrapping_add(1 + from as u32), &stream[from..to])
    }

    fn reply(&self, payload: &[u8]) -> Frame {
        Frame::tcp(self.blue, self.client, DATA)
            .seq(0x0bad_cafe)
            .payload(payload)
    }

    /// Client ports from `from` on whose flows `sample_below` samples
    /// (`sampled`) or not, `count` of them.
    fn ports(&self, from: u16, sample_below: u32, sampled: bool, count: usize) -> Vec<u16> {
        (from..u16::MAX)
            .filter(|&port| (self.port(port).sample_point() < sample_below) == sampled)
            .take(count)
            .collect()
    }
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec, written by the call.
    let failed = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(failed, 0, "clock_gettime(CLOCK_MONOTONIC)");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn tcp_flags(frame: &Frame) -> u8 {
    match frame.transport {
        Transport::Tcp { flags } => flags,
        other => panic!("{other:?} is not TCP"),
    }
}

/// XDP must pass `frame` on to `backend` with only its destination
/// rewritten, byte for byte; returns the frame it left.
fn assert_steered(
    dataplane: &TestDataplane,
    frame: &Frame,
    backend: SocketAddr,
    what: &str,
) -> Vec<u8> {
    let (verdict, output) = dataplane.run_xdp(&frame.build());
    assert_eq!(verdict, XDP_PASS, "{what}: XDP verdict");
    let expected = Frame {
        dst: backend,
        ..frame.clone()
    };
    assert!(
        output == expected.build(),
        "{what}: wrong output frame\n  got  {output:02x?}\n  want {:02x?}",
        expected.build()
    );
    output
}

/// Steers each frame to blue, checked as [`assert_steered`] does, and
/// returns what XDP left of each.
fn steer_all(dataplane: &TestDataplane, f: &Fixture, frames: &[Frame], what: &str) -> Vec<Vec<u8>> {
    frames
        .iter()
        .enumerate()
        .map(|(at, frame)| assert_steered(dataplane, frame, f.blue, &format!("{what}, frame {at}")))
        .collect()
}

/// The counters expected: zero but for `nonzero`.
fn counts(nonzero: &[(ShadowCount, u64)]) -> [u64; COUNTS] {
    let mut counts = [0; COUNTS];
    for &(what, value) in nonzero {
        counts[what as usize] = value;
    }
    counts
}

fn assert_counts(dataplane: &TestDataplane, nonzero: &[(ShadowCount, u64)], what: &str) {
    assert_eq!(
        dataplane.shadow_counts(),
        counts(nonzero),
        "{what}: shadow counters, indexed by ShadowCount"
    );
}

fn parsed<'a>(bytes: &'a [u8], what: &str) -> Record<'a> {
    capture::parse(bytes).unwrap_or_else(|error| panic!("{what}: bad ring record: {error}"))
}

/// `record` must be `frame`'s, of flow `key`, written between `before` and
/// `after`: every header field and the payload bytes, at most `limit` of
/// them.
fn assert_record(
    record: &[u8],
    frame: &Frame,
    key: FlowKey,
    (kind, limit): (u8, usize),
    (before, after): (u64, u64),
    what: &str,
) {
    let record = parsed(record, what);
    let captured = frame.payload.len().min(limit);
    assert!(
        (before..=after).contains(&record.header.at_ns),
        "{what}: at_ns {} outside the run, {before}..={after}",
        record.header.at_ns
    );
    let expected = ShadowHeader {
        at_ns: record.header.at_ns,
        key,
        seq: frame.tcp_seq.to_be_bytes(),
        wire_len: frame.payload.len() as u32,
        captured: captured as u16,
        kind,
        tcp_flags: tcp_flags(frame),
        counter_slot: SLOT as u16,
        reserved: [0; 2],
    };
    assert_eq!(record.header, expected, "{what}: record header");
    assert_eq!(
        record.payload,
        &frame.payload[..captured],
        "{what}: record payload"
    );
}

/// Sends `frames` of one client through XDP, each rewritten exactly, and
/// checks that each left the record it must.
fn assert_captured(
    dataplane: &TestDataplane,
    f: &Fixture,
    frames: &[Frame],
    what: &str,
) -> Vec<Vec<u8>> {
    let mut outputs = Vec::new();
    for (at, frame) in frames.iter().enumerate() {
        let what = format!("{what}, frame {at}");
        let before = monotonic_ns();
        outputs.push(assert_steered(dataplane, frame, f.blue, &what));
        let after = monotonic_ns();
        let records = dataplane.drain_shadow_ring();
        assert_eq!(records.len(), 1, "{what}: one record per segment");
        let client = (SHADOW_FROM_CLIENT, MAX_SHADOW_PAYLOAD);
        assert_record(&records[0], frame, f.key(), client, (before, after), &what);
    }
    outputs
}

/// A SYN, then three data segments.
fn conversation(f: &Fixture) -> Vec<Frame> {
    let isn = 0x1234_5678;
    let stream = b"GET /shadow HTTP/1.1\r\nHost: example\r\n\r\n";
    vec![
        f.syn(isn),
        f.piece(isn, stream, 0, 4),
        f.piece(isn, stream, 4, 22),
        f.piece(isn, stream, 22, stream.len()),
    ]
}

#[test]
fn nothing_is_captured_with_shadowing_off() {
    let f = Fixture::v4();
    let dataplane = f.dataplane(ShadowSettings::default());
    steer_all(&dataplane, &f, &conversation(&f), "shadowing off");
    assert!(dataplane.drain_shadow_ring().is_empty(), "no ring record");
    assert_counts(&dataplane, &[], "shadowing off");
}

fn every_segment_of_a_sampled_flow_is_recorded(ipv6: bool) {
    let f = Fixture::new(ipv6);
    let frames = conversation(&f);
    let dataplane = f.dataplane(every_flow(SESSION));
    let captured = assert_captured(&dataplane, &f, &frames, "sampled flow");
    let payload_bytes: usize = frames.iter().map(|frame| frame.payload.len()).sum();
    assert_counts(
        &dataplane,
        &[
            (ShadowCount::SampledFlows, 1),
            (ShadowCount::ClientRecords, 4),
            (ShadowCount::ClientBytes, payload_bytes as u64),
        ],
        "sampled flow",
    );
    let unshadowed = f.dataplane(ShadowSettings::default());
    assert_eq!(
        captured,
        steer_all(&unshadowed, &f, &frames, "shadowing off"),
        "capture changed a forwarded frame"
    );
}

#[test]
fn every_segment_of_a_sampled_flow_is_recorded_ipv4() {
    every_segment_of_a_sampled_flow_is_recorded(false);
}

#[test]
fn every_segment_of_a_sampled_flow_is_recorded_ipv6() {
    every_segment_of_a_sampled_flow_is_recorded(true);
}

#[test]
fn only_flows_sampled_at_their_start_in_this_session_are_captured() {
    let f = Fixture::v4();
    let isn = 5000;
    let mut dataplane = f.dataplane(ShadowSettings::default());
    assert_steered(&dataplane, &f.syn(isn), f.blue, "SYN before shadowing");
    dataplane.set_shadow(SLOT, every_flow(SESSION));
    assert_steered(
        &dataplane,
        &f.data(isn + 1, b"early"),
        f.blue,
        "segment of the older flow",
    );
    assert!(
        dataplane.drain_shadow_ring().is_empty(),
        "a flow begun before shadowing is not captured"
    );
    assert_counts(&dataplane, &[], "older flow");

    let later = f.port(40001);
    assert_captured(&dataplane, &later, &[later.syn(isn)], "SYN in session 7");
    dataplane.set_shadow(SLOT, every_flow(SESSION + 1));
    assert_steered(
        &dataplane,
        &later.data(isn + 1, b"late"),
        f.blue,
        "segment in session 8",
    );
    assert!(
        dataplane.drain_shadow_ring().is_empty(),
        "a flow of an earlier session is not captured"
    );
    let newest = f.port(40002);
    assert_captured(&dataplane, &newest, &[newest.syn(isn)], "SYN in session 8");
    assert_counts(
        &dataplane,
        &[
            (ShadowCount::SampledFlows, 2),
            (ShadowCount::ClientRecords, 2),
        ],
        "two flows sampled, one in each session",
    );
}

#[test]
fn a_tenth_of_new_flows_is_sampled_as_their_hashes_predict() {
    let f = Fixture::v4();
    let below = shadow_sample_below(1000);
    let dataplane = f.dataplane(ShadowSettings {
        sample_below: below,
        session: SESSION,
    });
    let clients: Vec<Fixture> = (20_000..22_000).map(|port| f.port(port)).collect();
    for client in &clients {
        assert_steered(&dataplane, &client.syn(1), f.blue, "SYN");
    }
    let mut predicted: Vec<FlowKey> = clients
        .iter()
        .filter(|client| client.sample_point() < below)
        .map(Fixture::key)
        .collect();
    let sampled = dataplane.shadow_counts()[ShadowCount::SampledFlows as usize];
    assert!(
        (140..=260).contains(&sampled),
        "{sampled} of 2,000 flows sampled at 10 %"
    );
    assert_eq!(
        sampled,
        predicted.len() as u64,
        "sampled flows, against shadow_sample_point(flow_hash) < {below}"
    );
    let mut recorded: Vec<FlowKey> = dataplane
        .drain_shadow_ring()
        .iter()
        .map(|record| parsed(record, "SYN record").header.key)
        .collect();
    let order = |key: &FlowKey| key.client_port;
    predicted.sort_by_key(order);
    recorded.sort_by_key(order);
    assert_eq!(
        recorded, predicted,
        "the SYNs recorded are the predicted flows'"
    );
}

/// What the reassembler makes of ring records.
fn reassemble(reassembler: &mut Reassembler, records: &[Vec<u8>]) -> Vec<FlowEvent> {
    let mut events = Vec::new();
    for bytes in records {
        let record = parsed(bytes, "segment record");
        assert_eq!(record.origin, Origin::Client, "a client's segment");
        reassembler.push(&record.segment(), &mut events);
    }
    events
}

fn delivered(events: &[FlowEvent]) -> Vec<u8> {
    events
        .iter()
        .filter_map(|event| match event {
            FlowEvent::Data { bytes, .. } => Some(bytes.as_slice()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .concat()
}

#[test]
fn reordered_and_resent_segments_reassemble_to_the_stream() {
    let f = Fixture::v4();
    let dataplane = f.dataplane(every_flow(SESSION));
    // The sequence numbers wrap within the stream.
    let isn = u32::MAX - 12;
    let stream = b"POST /orders HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    let last = f.piece(isn, stream, 30, stream.len());
    let frames = [
        f.syn(isn),
        f.piece(isn, stream, 20, 30),
        f.piece(isn, stream, 0, 10),
        f.piece(isn, stream, 0, 10),
        f.piece(isn, stream, 5, 15),
        Frame::tcp(f.client, f.vip, DATA | TCP_FIN)
            .seq(last.tcp_seq)
            .payload(&last.payload),
        f.piece(isn, stream, 10, 20),
    ];
    steer_all(&dataplane, &f, &frames, "shuffled stream");
    let mut reassembler = Reassembler::new(Limits::default());
    let events = reassemble(&mut reassembler, &dataplane.drain_shadow_ring());
    assert_eq!(delivered(&events), stream, "the stream, each byte once");
    assert!(
        matches!(events.last(), Some(FlowEvent::Closed { key, .. }) if *key == f.key()),
        "closed at the FIN once every byte arrived: {events:?}"
    );
    let counters = reassembler.counters();
    assert_eq!(
        (
            counters.retransmitted,
            counters.overlaps,
            counters.out_of_order
        ),
        (1, 2, 2),
        "(retransmitted, overlaps, out of order)"
    );

    let gap = f.port(40001);
    let frames = [
        gap.syn(isn),
        gap.piece(isn, stream, 0, 10),
        gap.piece(isn, stream, 20, 30),
    ];
    steer_all(&dataplane, &f, &frames, "stream with a hole");
    let records = dataplane.drain_shadow_ring();
    let events = reassemble(&mut reassembler, &records);
    assert_eq!(
        delivered(&events),
        &stream[..10],
        "the bytes before the hole"
    );
    let held_at = parsed(records.last().expect("three records"), "held")
        .header
        .at_ns;
    let timeout = Limits::default().gap_timeout_ns;
    let mut expired = Vec::new();
    reassembler.expire(held_at + timeout, &mut expired);
    assert!(
        expired.is_empty(),
        "not abandoned within the timeout: {expired:?}"
    );
    reassembler.expire(held_at + timeout + 1, &mut expired);
    assert_eq!(
        expired,
        [FlowEvent::Abandoned {
            key: gap.key(),
            reason: AbandonReason::Gap
        }],
        "abandoned once the hole outlived the timeout"
    );
}

/// `frame` must leave XDP as it leaves a dataplane that does not shadow,
/// both holding the same established flow.
fn assert_as_unshadowed(
    shadowed: &TestDataplane,
    unshadowed: &TestDataplane,
    frame: &[u8],
    what: &str,
) {
    let with = shadowed.run_xdp(frame);
    let without = unshadowed.run_xdp(frame);
    assert_eq!(
        with, without,
        "{what}: (verdict, frame) with shadowing, without"
    );
}

/// `frame` with its IPv4 total length changed to `total`, header checksum
/// made right again.
fn with_ipv4_total(mut frame: Vec<u8>, total: u16) -> Vec<u8> {
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    frame[24..26].fill(0);
    let checksum = internet_checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&checksum.to_be_bytes());
    frame
}

#[test]
fn malformed_segments_of_a_sampled_flow_go_on_unrecorded() {
    let f = Fixture::v4();
    let shadowed = f.dataplane(every_flow(SESSION));
    let unshadowed = f.dataplane(ShadowSettings::default());
    for dataplane in [&shadowed, &unshadowed] {
        assert_steered(dataplane, &f.syn(1), f.blue, "SYN");
    }
    shadowed.drain_shadow_ring();
    let segment = f.data(2, b"nine byte");

    let mut past_the_end = segment.build();
    // Data offset 15 words: a 60-byte header in 29 bytes of IP payload.
    past_the_end[14 + 20 + 12] = 15 << 4;
    assert_as_unshadowed(
        &shadowed,
        &unshadowed,
        &past_the_end,
        "data offset past the end",
    );
    let built = segment.build();
    let longer = with_ipv4_total(built.clone(), (built.len() - 14 + 100) as u16);
    assert_as_unshadowed(
        &shadowed,
        &unshadowed,
        &longer,
        "IPv4 total length past the frame",
    );
    let mut inside_the_header = segment.build();
    // Data offset 4 words: the "payload" would start inside the TCP
    // header, bytes a receiver never takes for data.
    inside_the_header[14 + 20 + 12] = 4 << 4;
    assert_as_unshadowed(
        &shadowed,
        &unshadowed,
        &inside_the_header,
        "data offset below the minimal header",
    );
    assert!(
        shadowed.drain_shadow_ring().is_empty(),
        "no record of a segment whose lengths do not add up"
    );
    assert_counts(
        &shadowed,
        &[
            (ShadowCount::SampledFlows, 1),
            (ShadowCount::ClientRecords, 1),
            (ShadowCount::Malformed, 3),
        ],
        "malformed segments",
    );
}

/// Only a multi-buffer frame can carry more than a record does: the test
/// run takes one, and hands the program its tail as fragments.
#[test]
fn an_oversized_segment_is_recorded_cut() {
    let f = Fixture::v4();
    let dataplane = f.dataplane(every_flow(SESSION));
    let jumbo: Vec<u8> = (0..MAX_SHADOW_PAYLOAD + 100).map(|at| at as u8).collect();
    let frames = [f.syn(1), f.data(2, &jumbo)];
    assert_captured(&dataplane, &f, &frames, "oversized segment");
    assert_counts(
        &dataplane,
        &[
            (ShadowCount::SampledFlows, 1),
            (ShadowCount::ClientRecords, 2),
            (ShadowCount::ClientBytes, MAX_SHADOW_PAYLOAD as u64),
            (ShadowCount::Truncated, 1),
        ],
        "oversized segment",
    );
}

#[test]
fn a_sampled_flows_replies_are_recorded_as_a_prefix() {
    let f = Fixture::v4();
    let below = shadow_sample_below(5000);
    let dataplane = f.dataplane(ShadowSettings {
        sample_below: below,
        session: SESSION,
    });
    let sampled = f.port(f.ports(30_000, below, true, 1)[0]);
    let unsampled = f.port(f.ports(30_000, below, false, 1)[0]);
    for client in [sampled, unsampled] {
        assert_steered(&dataplane, &client.syn(1), f.blue, "SYN");
    }
    assert_eq!(
        dataplane.drain_shadow_ring().len(),
        1,
        "the sampled SYN's record"
    );
    let body = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    for client in [sampled, unsampled] {
        let reply = client.reply(body);
        let before = monotonic_ns();
        let (verdict, output) = dataplane.run_tc(&reply.build());
        let after = monotonic_ns();
        assert_eq!(verdict, TC_ACT_OK, "TC verdict");
        assert_eq!(
            output,
            Frame {
                src: f.vip,
                ..reply.clone()
            }
            .build(),
            "the reply leaves from the VIP"
        );
        let records = dataplane.drain_shadow_ring();
        if client.client == sampled.client {
            assert_eq!(records.len(), 1, "one record of the sampled flow's reply");
            let live = (SHADOW_FROM_LIVE, SHADOW_REPLY_PREFIX);
            assert_record(
                &records[0],
                &reply,
                client.key(),
                live,
                (before, after),
                "reply",
            );
        } else {
            assert!(records.is_empty(), "no record of an unsampled flow's reply");
        }
    }
    assert_counts(
        &dataplane,
        &[
            (ShadowCount::SampledFlows, 1),
            (ShadowCount::ClientRecords, 1),
            (ShadowCount::LiveRecords, 1),
        ],
        "one sampled flow and its reply",
    );
}

#[test]
fn a_full_ring_costs_records_never_packets() {
    let f = Fixture::v4();
    let dataplane = f.dataplane(every_flow(SESSION));
    assert_steered(&dataplane, &f.syn(0), f.blue, "SYN");
    // Large, so that some 2,000 fill the ring.
    let payload = vec![b'x'; 8000];
    let mut sent = 0u64;
    while dataplane.shadow_counts()[ShadowCount::RingFull as usize] == 0 {
        assert!(
            sent < 20_000,
            "20,000 segments of 8,000 bytes never filled the ring"
        );
        let seq = 1 + (sent as u32) * payload.len() as u32;
        assert_steered(
            &dataplane,
            &f.data(seq, &payload),
            f.blue,
            &format!("segment {sent}"),
        );
        sent += 1;
    }
    let recorded = sent;
    assert_steered(
        &dataplane,
        &f.data(0, &payload),
        f.blue,
        "a segment when the ring is full",
    );
    assert_counts(
        &dataplane,
        &[
            (ShadowCount::SampledFlows, 1),
            (ShadowCount::ClientRecords, recorded),
            (
                ShadowCount::ClientBytes,
                (recorded - 1) * payload.len() as u64,
            ),
            (ShadowCount::RingFull, 2),
        ],
        "the SYN and every segment but the last two recorded",
    );
    assert_eq!(
        dataplane.drain_shadow_ring().len() as u64,
        recorded,
        "the ring held what was recorded"
    );
    assert_captured(
        &dataplane,
        &f,
        &[f.data(7, b"after")],
        "once read, the ring takes records again",
    );
}

#[test]
fn a_retransmitted_syn_is_recorded_again_but_sampled_once() {
    let f = Fixture::v4();
    let dataplane = f.dataplane(every_flow(SESSION));
    let frames = [f.syn(7000), f.syn(7000)];
    assert_captured(&dataplane, &f, &frames, "a SYN and its retransmission");
    assert_counts(
        &dataplane,
        &[
            (ShadowCount::SampledFlows, 1),
            (ShadowCount::ClientRecords, 2),
        ],
        "one flow, two records",
    );
}
