//! Rebuilds the client byte stream of each shadowed TCP flow from the
//! segments the XDP program copies into the ring buffer.
//!
//! The ring buffer gives no ordering between CPUs and drops records when it
//! is full, and the capture sees retransmissions and overlapping resends
//! like the server does. So each flow keeps the offset of the next byte its
//! stream needs, hands over in-order bytes at once, holds segments that
//! arrived ahead of a hole, and gives the flow up when the hole does not
//! fill in time: a lost capture never comes back.
//!
//! Offsets within a stream are 64-bit counts from the byte after the ISN,
//! so buffered segments sort correctly however often the 32-bit sequence
//! number wraps; a segment's sequence number is read relative to the next
//! expected one, which is only meaningful within `max_window` of it.
//!
//! Memory is bounded by [`Limits`]: the flows followed at once, and the
//! bytes held ahead of holes, each held segment charged
//! [`SEGMENT_OVERHEAD`] beyond its payload.

use std::collections::{BTreeMap, HashMap};

use bluegreen_common::{
    FlowKey,
    wire::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// What each held segment costs beyond its payload toward
/// [`Limits::max_buffered_bytes`]: its tree slot, its vector header and the
/// allocator's rounding. Without it a flood of 1-byte segments at distinct
/// offsets would hold many times the limit in bookkeeping.
pub const SEGMENT_OVERHEAD: usize = 64;

/// Bounds on what the reassembler holds, whatever its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Flows followed at once; opening one more abandons the oldest. 0
    /// acts as 1.
    pub max_flows: usize,
    /// Memory the segments held ahead of holes may take, each charged
    /// [`SEGMENT_OVERHEAD`] beyond its payload.
    pub max_buffered_bytes: usize,
    /// How long a flow may wait on a hole before it is abandoned.
    pub gap_timeout_ns: u64,
    /// How far before or after the next expected byte a segment may start.
    /// Anything farther is a forgery or a stale duplicate. Values above
    /// 2^31 - 1 act as 2^31 - 1: past half the sequence space, ahead and
    /// behind cannot be told apart.
    pub max_window: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_flows: 4096,
            max_buffered_bytes: 64 << 20,
            gap_timeout_ns: 3_000_000_000,
            max_window: 16 << 20,
        }
    }
}

/// One client-to-server TCP segment as the XDP program captured it.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    pub key: FlowKey,
    pub seq: u32,
    /// TCP flags, as in [`bluegreen_common::wire`].
    pub flags: u8,
    /// The captured payload: shorter than `wire_len` when the capture was
    /// cut, and any bytes past `wire_len` are not the segment's (a
    /// fixed-size copy can catch Ethernet padding).
    pub payload: &'a [u8],
    /// The payload's length on the wire.
    pub wire_len: u32,
    /// `bpf_ktime_get_ns()` at capture.
    pub at_ns: u64,
}

/// What a push or an expiry changed, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowEvent {
    /// A SYN started the flow: its stream begins empty.
    Opened { key: FlowKey, at_ns: u64 },
    /// The next bytes of the stream, each delivered exactly once.
    Data {
        key: FlowKey,
        bytes: Vec<u8>,
        at_ns: u64,
    },
    /// The client finished (FIN, once every byte before it was delivered)
    /// or reset the flow, or reused its port for a new one.
    Closed { key: FlowKey, at_ns: u64 },
    /// The stream cannot be rebuilt any further; the flow is forgotten.
    Abandoned { key: FlowKey, reason: AbandonReason },
}

/// Why a flow's stream was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbandonReason {
    /// A hole was not filled within [`Limits::gap_timeout_ns`].
    Gap,
    /// A segment's payload was captured only in part.
    Truncated,
    /// Held bytes reached [`Limits::max_buffered_bytes`].
    MemoryLimit,
    /// A newer flow needed the slot ([`Limits::max_flows`]).
    FlowLimit,
}

/// What the reassembler has seen since it started, for metrics.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub segments: u64,
    pub bytes_delivered: u64,
    /// Segments that brought no new byte (all delivered or held already),
    /// and repeated SYNs.
    pub retransmitted: u64,
    /// Segments partly new: the rest was delivered or held already.
    pub overlaps: u64,
    /// Segments held ahead of a hole (some are overlaps too).
    pub out_of_order: u64,
    /// Segments dropped for starting more than `max_window` from the next
    /// expected byte.
    pub out_of_window: u64,
    /// Segments with data of flows whose SYN was never seen, or that were
    /// abandoned or closed: ignored.
    pub mid_stream: u64,
    pub opened: u64,
    pub closed: u64,
    pub abandoned_gap: u64,
    pub abandoned_truncated: u64,
    pub abandoned_memory: u64,
    pub abandoned_flows: u64,
}

struct Flow {
    isn: u32,
    /// Rank in opening order, the key of `Reassembler::opened`.
    serial: u64,
    /// Stream offset of the next byte to deliver.
    delivered: u64,
    /// Segments ahead of `delivered`, by stream offset, never overlapping.
    held: BTreeMap<u64, Vec<u8>>,
    /// What `held` is charged toward the memory limit.
    held_charge: usize,
    /// The stream offset the FIN takes: the stream ends there.
    fin_at: Option<u64>,
    /// When the stream began waiting on its current hole.
    stalled_since: Option<u64>,
}

impl Flow {
    fn next_seq(&self) -> u32 {
        // Truncating the offset is the modulo-2^32 arithmetic of TCP.
        self.isn.wrapping_add(1).wrapping_add(self.delivered as u32)
    }

    fn waiting(&self) -> bool {
        !self.held.is_empty() || self.fin_at.is_some_and(|fin_at| fin_at > self.delivered)
    }

    /// Drops held bytes at or past the FIN, which cannot be the stream's;
    /// returns the charge released.
    fn discard_from(&mut self, fin_at: u64) -> usize {
        let beyond = self.held.split_off(&fin_at);
        let mut released: usize = beyond.values().map(|bytes| charge(bytes.len())).sum();
        if let Some((&at, bytes)) = self.held.iter_mut().next_back() {
            let keep = (fin_at - at) as usize;
            if bytes.len() > keep {
                released += bytes.len() - keep;
                bytes.truncate(keep);
                bytes.shrink_to_fit();
            }
        }
        self.held_charge -= released;
        released
    }

    /// Narrows `[start, end)`, which lies past `delivered`, to one range
    /// that holds every byte not held yet, dropping the held segments it
    /// covers whole so that no byte is held twice.
    fn unheld(&mut self, mut start: u64, mut end: u64) -> Unheld {
        if let Some((&at, bytes)) = self.held.range(..=start).next_back() {
            start = start.max(at + bytes.len() as u64);
        }
        let mut unheld = Unheld {
            start,
            end,
            covered_bytes: 0,
            released: 0,
        };
        if start >= end {
            return unheld;
        }
        let inside: Vec<u64> = self.held.range(start..end).map(|(&at, _)| at).collect();
        for at in inside {
            let len = self.held[&at].len();
            if at + len as u64 > end {
                // The held segment runs past this one: it keeps its bytes.
                end = at;
                break;
            }
            self.held.remove(&at);
            unheld.covered_bytes += len;
            unheld.released += charge(len);
        }
        self.held_charge -= unheld.released;
        unheld.end = end;
        unheld
    }
}

/// The part of a segment to hold, and what holding it replaced.
struct Unheld {
    start: u64,
    end: u64,
    /// Payload bytes of the held segments it replaced.
    covered_bytes: usize,
    /// Their charge toward the memory limit, released already.
    released: usize,
}

fn charge(len: usize) -> usize {
    len + SEGMENT_OVERHEAD
}

/// Rebuilds flows' client streams; see the module documentation.
pub struct Reassembler {
    limits: Limits,
    flows: HashMap<FlowKey, Flow>,
    /// Flows by opening order: the oldest is abandoned first.
    opened: BTreeMap<u64, FlowKey>,
    next_serial: u64,
    held_charge: usize,
    counters: Counters,
}

impl Reassembler {
    pub fn new(limits: Limits) -> Self {
        let limits = Limits {
            max_flows: limits.max_flows.max(1),
            max_window: limits.max_window.min(i32::MAX as u32),
            ..limits
        };
        Self {
            limits,
            flows: HashMap::new(),
            opened: BTreeMap::new(),
            next_serial: 0,
            held_charge: 0,
            counters: Counters::default(),
        }
    }

    /// Takes one captured segment; what it changed is appended to `events`.
    pub fn push(&mut self, segment: &Segment, events: &mut Vec<FlowEvent>) {
        self.counters.segments += 1;
        let captured = segment.payload.len().min(segment.wire_len as usize);
        let payload = &segment.payload[..captured];
        let truncated = captured < segment.wire_len as usize;
        let mut seq = segment.seq;
        if segment.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            if !self.open(segment.key, segment.seq, segment.at_ns, events) {
                return;
            }
            // The SYN takes the ISN's slot; data it carries (TCP Fast Open)
            // starts after it.
            seq = seq.wrapping_add(1);
            if payload.is_empty() && !truncated && segment.flags & (TCP_FIN | TCP_RST) == 0 {
                return;
            }
        }
        self.accept(segment, seq, payload, truncated, events);
    }

    /// Abandons the flows that have waited on a hole for longer than
    /// [`Limits::gap_timeout_ns`], oldest-opened first. The wait starts when
    /// a segment is first held ahead of the hole, or when the stream last
    /// advanced with segments still held.
    pub fn expire(&mut self, now_ns: u64, events: &mut Vec<FlowEvent>) {
        let timeout = self.limits.gap_timeout_ns;
        let mut stalled: Vec<(u64, FlowKey)> = self
            .flows
            .iter()
            .filter(|(_, flow)| {
                flow.stalled_since
                    .is_some_and(|since| now_ns.saturating_sub(since) > timeout)
            })
            .map(|(key, flow)| (flow.serial, *key))
            .collect();
        stalled.sort_unstable_by_key(|(serial, _)| *serial);
        for (_, key) in stalled {
            self.abandon(key, AbandonReason::Gap, events);
        }
    }

    /// Drops a flow the consumer no longer wants, without an event.
    pub fn forget(&mut self, key: &FlowKey) {
        self.remove(key);
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Bytes held ahead of holes, as charged toward
    /// [`Limits::max_buffered_bytes`]: payload plus [`SEGMENT_OVERHEAD`] per
    /// held segment.
    pub fn buffered_bytes(&self) -> usize {
        self.held_charge
    }

    /// Starts a flow at its SYN; says whether the segment goes on to the
    /// stream (false for a retransmitted SYN).
    fn open(&mut self, key: FlowKey, isn: u32, at_ns: u64, events: &mut Vec<FlowEvent>) -> bool {
        if let Some(flow) = self.flows.get(&key) {
            if flow.isn == isn {
                self.counters.retransmitted += 1;
                return false;
            }
            // A new ISN on a known flow: the client reused the port, so
            // the previous connection is over.
            self.close(key, at_ns, events);
        }
        while self.flows.len() >= self.limits.max_flows {
            let Some((_, &oldest)) = self.opened.first_key_value() else {
                break;
            };
            self.abandon(oldest, AbandonReason::FlowLimit, events);
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        self.opened.insert(serial, key);
        self.flows.insert(
            key,
            Flow {
                isn,
                serial,
                delivered: 0,
                held: BTreeMap::new(),
                held_charge: 0,
                fin_at: None,
                stalled_since: None,
            },
        );
        self.counters.opened += 1;
        events.push(FlowEvent::Opened { key, at_ns });
        true
    }

    /// Applies a segment's payload and its FIN or RST to a known flow.
    fn accept(
        &mut self,
        segment: &Segment,
        seq: u32,
        payload: &[u8],
        truncated: bool,
        events: &mut Vec<FlowEvent>,
    ) {
        let key = segment.key;
        let at_ns = segment.at_ns;
        let Some(flow) = self.flows.get_mut(&key) else {
            // A bare ACK or FIN carries nothing to lose: the client's last
            // ACK after its flow closed is one.
            if !payload.is_empty() {
                self.counters.mid_stream += 1;
            }
            return;
        };
        let distance = seq.wrapping_sub(flow.next_seq()) as i32;
        if distance.unsigned_abs() > self.limits.max_window {
            self.counters.out_of_window += 1;
            return;
        }
        if truncated {
            self.abandon(key, AbandonReason::Truncated, events);
            return;
        }
        if segment.flags & TCP_RST != 0 {
            self.close(key, at_ns, events);
            return;
        }
        let delivered = flow.delivered as i64;
        // Negative only for bytes before the stream's start, which are
        // treated as delivered.
        let start = delivered + i64::from(distance);
        let mut end = start + payload.len() as i64;
        if segment.flags & TCP_FIN != 0 && flow.fin_at.is_none() && end >= delivered {
            flow.fin_at = Some(end as u64);
            self.held_charge -= flow.discard_from(end as u64);
        }
        if let Some(fin_at) = flow.fin_at {
            end = end.min(fin_at as i64);
        }
        let mut advanced = false;
        if end <= start {
            // No payload inside the stream: an ACK, or a FIN alone.
        } else if end <= delivered {
            self.counters.retransmitted += 1;
        } else if start <= delivered {
            if start < delivered {
                self.counters.overlaps += 1;
            }
            let mut bytes = payload[(delivered - start) as usize..(end - start) as usize].to_vec();
            flow.delivered = end as u64;
            while let Some(entry) = flow.held.first_entry() {
                let at = *entry.key();
                if at > flow.delivered {
                    break;
                }
                let held = entry.remove();
                flow.held_charge -= charge(held.len());
                self.held_charge -= charge(held.len());
                let held_end = at + held.len() as u64;
                if held_end > flow.delivered {
                    bytes.extend_from_slice(&held[(flow.delivered - at) as usize..]);
                    flow.delivered = held_end;
                }
            }
            self.counters.bytes_delivered += bytes.len() as u64;
            events.push(FlowEvent::Data { key, bytes, at_ns });
            advanced = true;
        } else {
            let (start, end) = (start as u64, end as u64);
            let unheld = flow.unheld(start, end);
            self.held_charge -= unheld.released;
            if unheld.start >= unheld.end {
                self.counters.retransmitted += 1;
            } else {
                let len = (unheld.end - unheld.start) as usize;
                if !self.make_room(key, charge(len), events) {
                    return;
                }
                if len == unheld.covered_bytes {
                    // Only held bytes again, held now as one segment.
                    self.counters.retransmitted += 1;
                } else {
                    self.counters.out_of_order += 1;
                    if unheld.covered_bytes > 0 || unheld.start > start || unheld.end < end {
                        self.counters.overlaps += 1;
                    }
                }
                let flow = self.flows.get_mut(&key).expect("make_room kept the flow");
                let from = (unheld.start - start) as usize;
                flow.held
                    .insert(unheld.start, payload[from..from + len].to_vec());
                flow.held_charge += charge(len);
                self.held_charge += charge(len);
            }
        }
        let flow = self.flows.get_mut(&key).expect("the flow is still open");
        if flow.fin_at == Some(flow.delivered) {
            self.close(key, at_ns, events);
            return;
        }
        if advanced {
            flow.stalled_since = flow.waiting().then_some(at_ns);
        } else if flow.waiting() && flow.stalled_since.is_none() {
            flow.stalled_since = Some(at_ns);
        }
    }

    /// Abandons flows, oldest-opened first, until `charge` more fits under
    /// the memory limit. Only flows holding bytes free any, and the flow
    /// asking for room; says whether that flow survived.
    fn make_room(&mut self, key: FlowKey, charge: usize, events: &mut Vec<FlowEvent>) -> bool {
        while self.held_charge + charge > self.limits.max_buffered_bytes {
            let victim = self
                .opened
                .values()
                .find(|open| **open == key || self.flows[*open].held_charge > 0)
                .copied()
                .expect("the flow asking for room is open");
            self.abandon(victim, AbandonReason::MemoryLimit, events);
            if victim == key {
                return false;
            }
        }
        true
    }

    fn close(&mut self, key: FlowKey, at_ns: u64, events: &mut Vec<FlowEvent>) {
        if self.remove(&key) {
            self.counters.closed += 1;
            events.push(FlowEvent::Closed { key, at_ns });
        }
    }

    fn abandon(&mut self, key: FlowKey, reason: AbandonReason, events: &mut Vec<FlowEvent>) {
        if !self.remove(&key) {
            return;
        }
        let counter = match reason {
            AbandonReason::Gap => &mut self.counters.abandoned_gap,
            AbandonReason::Truncated => &mut self.counters.abandoned_truncated,
            AbandonReason::MemoryLimit => &mut self.counters.abandoned_memory,
            AbandonReason::FlowLimit => &mut self.counters.abandoned_flows,
        };
        *counter += 1;
        events.push(FlowEvent::Abandoned { key, reason });
    }

    fn remove(&mut self, key: &FlowKey) -> bool {
        let Some(flow) = self.flows.remove(key) else {
            return false;
        };
        self.opened.remove(&flow.serial);
        self.held_charge -= flow.held_charge;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISN: u32 = 1000;

    fn key(client_port: u16) -> FlowKey {
        FlowKey {
            client: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            server: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            client_port: client_port.to_be_bytes(),
            server_port: 80u16.to_be_bytes(),
            proto: 6,
            family: bluegreen_common::FAMILY_IPV4,
            reserved: [0; 2],
        }
    }

    /// A segment whose payload was captured whole.
    fn segment(key: FlowKey, seq: u32, flags: u8, payload: &[u8], at_ns: u64) -> Segment<'_> {
        Segment {
            key,
            seq,
            flags,
            payload,
            wire_len: payload.len() as u32,
            at_ns,
        }
    }

    /// A reassembler with a flow opened at `ISN` on port 1.
    fn opened(limits: Limits) -> (Reassembler, Vec<FlowEvent>) {
        let mut reassembler = Reassembler::new(limits);
        let mut events = Vec::new();
        reassembler.push(&segment(key(1), ISN, TCP_SYN, b"", 0), &mut events);
        assert_eq!(
            events,
            [FlowEvent::Opened {
                key: key(1),
                at_ns: 0
            }],
            "a SYN opens the flow"
        );
        events.clear();
        (reassembler, events)
    }

    /// Payload `bytes` at stream offset `offset` of the flow on port 1.
    fn data(offset: u32, bytes: &[u8]) -> Segment<'_> {
        segment(key(1), ISN + 1 + offset, TCP_ACK, bytes, 0)
    }

    fn delivered(events: &[FlowEvent]) -> Vec<u8> {
        events
            .iter()
            .filter_map(|event| match event {
                FlowEvent::Data { bytes, .. } => Some(bytes.as_slice()),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }

    fn data_events(events: &[FlowEvent]) -> usize {
        events
            .iter()
            .filter(|event| matches!(event, FlowEvent::Data { .. }))
            .count()
    }

    #[test]
    fn in_order_segments_are_delivered_at_once() {
        let (mut reassembler, mut events) = opened(Limits::default());
        reassembler.push(&data(0, b"GET "), &mut events);
        assert_eq!(
            events,
            [FlowEvent::Data {
                key: key(1),
                bytes: b"GET ".to_vec(),
                at_ns: 0
            }],
            "the first bytes are delivered by the push that brings them"
        );
        reassembler.push(&data(4, b"/ HTTP/1.1\r\n"), &mut events);
        assert_eq!(
            delivered(&events),
            b"GET / HTTP/1.1\r\n",
            "the stream in order"
        );
        assert_eq!(data_events(&events), 2, "one Data event per push");
        let counters = reassembler.counters();
        assert_eq!(counters.bytes_delivered, 16, "every byte counted once");
        assert_eq!(counters.segments, 3, "the SYN and two data segments");
        assert_eq!(reassembler.buffered_bytes(), 0, "nothing held");
    }

    #[test]
    fn three_segments_reassemble_in_every_permutation() {
        let pieces: [(u32, &[u8]); 3] = [(0, b"abc"), (3, b"defg"), (7, b"hi")];
        let permutations = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for order in permutations {
            let (mut reassembler, mut events) = opened(Limits::default());
            for index in order {
                let (offset, bytes) = pieces[index];
                reassembler.push(&data(offset, bytes), &mut events);
            }
            assert_eq!(delivered(&events), b"abcdefghi", "order {order:?}");
            assert_eq!(
                reassembler.buffered_bytes(),
                0,
                "nothing held once contiguous, order {order:?}"
            );
            let held_ahead = order
                .iter()
                .enumerate()
                .filter(|(at, index)| {
                    order[..*at].iter().filter(|seen| **seen < **index).count() < **index
                })
                .count() as u64;
            assert_eq!(
                reassembler.counters().out_of_order,
                held_ahead,
                "segments arriving before those in front of them are held, order {order:?}"
            );
        }
    }

    #[test]
    fn held_segments_are_delivered_in_one_event_once_contiguous() {
        let (mut reassembler, mut events) = opened(Limits::default());
        reassembler.push(&data(6, b"ghi"), &mut events);
        reassembler.push(&data(3, b"def"), &mut events);
        assert!(
            events.is_empty(),
            "nothing delivered before the hole is filled"
        );
        assert_eq!(
            reassembler.buffered_bytes(),
            6 + 2 * SEGMENT_OVERHEAD,
            "two segments held, each with its overhead"
        );
        reassembler.push(&data(0, b"abc"), &mut events);
        assert_eq!(
            events,
            [FlowEvent::Data {
                key: key(1),
                bytes: b"abcdefghi".to_vec(),
                at_ns: 0
            }],
            "the filled hole and what was held behind it, coalesced"
        );
    }

    #[test]
    fn retransmissions_and_overlaps_deliver_each_byte_once() {
        let (mut reassembler, mut events) = opened(Limits::default());
        reassembler.push(&data(0, b"abcd"), &mut events);
        reassembler.push(&data(0, b"abcd"), &mut events);
        reassembler.push(&data(1, b"bc"), &mut events);
        assert_eq!(
            reassembler.counters().retransmitted,
            2,
            "wholly delivered segments"
        );
        reassembler.push(&data(2, b"cdef"), &mut events);
        assert_eq!(
            reassembler.counters().overlaps,
            1,
            "partly delivered segment"
        );
        // Held segments overlapped on either side and covered whole.
        reassembler.push(&data(10, b"klm"), &mut events);
        reassembler.push(&data(9, b"jklmn"), &mut events);
        reassembler.push(&data(8, b"ij"), &mut events);
        reassembler.push(&data(12, b"m"), &mut events);
        reassembler.push(&data(7, b"hijklmnop"), &mut events);
        reassembler.push(&data(4, b"efghijklmnopq"), &mut events);
        assert_eq!(
            delivered(&events),
            b"abcdefghijklmnopq",
            "each byte exactly once"
        );
        let counters = reassembler.counters();
        assert_eq!(counters.bytes_delivered, 17, "delivered bytes counted once");
        assert_eq!(counters.retransmitted, 3, "the held duplicate counted too");
        assert_eq!(
            counters.out_of_order, 4,
            "four segments brought new bytes ahead of the hole"
        );
        assert_eq!(counters.overlaps, 5, "partly new segments");
        assert_eq!(reassembler.buffered_bytes(), 0, "nothing left held");
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        let mut reassembler = Reassembler::new(Limits::default());
        let mut events = Vec::new();
        let isn = u32::MAX - 2;
        reassembler.push(&segment(key(1), isn, TCP_SYN, b"", 0), &mut events);
        // Stream offset 0 is at u32::MAX - 1; offset 2 wraps to 0.
        reassembler.push(&segment(key(1), 3, TCP_ACK, b"fgh", 0), &mut events);
        reassembler.push(&segment(key(1), 0, TCP_ACK, b"cde", 0), &mut events);
        reassembler.push(
            &segment(key(1), u32::MAX - 1, TCP_ACK, b"ab", 0),
            &mut events,
        );
        reassembler.push(&segment(key(1), u32::MAX, TCP_ACK, b"bc", 0), &mut events);
        reassembler.push(&segment(key(1), 6, TCP_FIN | TCP_ACK, b"", 0), &mut events);
        assert_eq!(
            delivered(&events),
            b"abcdefgh",
            "the stream across the wrap"
        );
        assert_eq!(
            reassembler.counters().retransmitted,
            1,
            "a resend across the wrap"
        );
        assert_eq!(
            reassembler.counters().out_of_window,
            0,
            "no segment mistaken for far away"
        );
        assert_eq!(
            events.last(),
            Some(&FlowEvent::Closed {
                key: key(1),
                at_ns: 0
            }),
            "the FIN past the wrap closes the flow"
        );
    }

    #[test]
    fn a_gap_is_abandoned_by_expire_only_after_the_timeout() {
        let limits = Limits {
            gap_timeout_ns: 1_000,
            ..Limits::default()
        };
        let (mut reassembler, mut events) = opened(limits);
        let mut ahead = data(4, b"efgh");
        ahead.at_ns = 5_000;
        reassembler.push(&ahead, &mut events);
        reassembler.expire(6_000, &mut events);
        assert!(
            events.is_empty(),
            "a hole exactly as old as the timeout is kept"
        );
        assert_eq!(reassembler.flows(), 1, "the flow still waits");
        reassembler.expire(6_001, &mut events);
        assert_eq!(
            events,
            [FlowEvent::Abandoned {
                key: key(1),
                reason: AbandonReason::Gap
            }],
            "a hole older than the timeout gives the flow up"
        );
        assert_eq!(reassembler.counters().abandoned_gap, 1, "counted");
        assert_eq!(reassembler.flows(), 0, "forgotten");
        assert_eq!(reassembler.buffered_bytes(), 0, "its held bytes released");
        events.clear();
        reassembler.push(&data(0, b"abcd"), &mut events);
        assert!(
            events.is_empty(),
            "the late bytes of an abandoned flow are ignored"
        );
        assert_eq!(
            reassembler.counters().mid_stream,
            1,
            "and counted as mid-stream"
        );
    }

    #[test]
    fn a_stream_that_advances_restarts_the_gap_clock() {
        let limits = Limits {
            gap_timeout_ns: 1_000,
            ..Limits::default()
        };
        let (mut reassembler, mut events) = opened(limits);
        let mut pushed = |offset: u32, bytes: &[u8], at_ns: u64| {
            let mut segment = data(offset, bytes);
            segment.at_ns = at_ns;
            reassembler.push(&segment, &mut events);
        };
        pushed(8, b"ij", 0);
        pushed(4, b"efg", 0);
        pushed(0, b"abcd", 900);
        reassembler.expire(1_500, &mut events);
        assert_eq!(
            reassembler.flows(),
            1,
            "waiting on the next hole only since 900"
        );
        reassembler.expire(1_901, &mut events);
        assert_eq!(
            reassembler.flows(),
            0,
            "abandoned once that wait is too long"
        );
        let (mut reassembler, mut events) = opened(limits);
        reassembler.push(&data(0, b"abcd"), &mut events);
        reassembler.expire(u64::MAX, &mut events);
        assert_eq!(
            reassembler.flows(),
            1,
            "a flow without a hole never expires"
        );
    }

    #[test]
    fn a_truncated_capture_abandons_the_flow() {
        let (mut reassembler, mut events) = opened(Limits::default());
        reassembler.push(&data(0, b"abcd"), &mut events);
        events.clear();
        let mut cut = data(4, b"ef");
        cut.wire_len = 1400;
        reassembler.push(&cut, &mut events);
        assert_eq!(
            events,
            [FlowEvent::Abandoned {
                key: key(1),
                reason: AbandonReason::Truncated
            }],
            "the missing bytes cannot be rebuilt"
        );
        assert_eq!(reassembler.counters().abandoned_truncated, 1, "counted");
        assert_eq!(reassembler.flows(), 0, "forgotten");
    }

    #[test]
    fn bytes_past_the_wire_length_are_padding() {
        let (mut reassembler, mut events) = opened(Limits::default());
        let mut padded = data(0, b"ab\0\0\0\0");
        padded.wire_len = 2;
        reassembler.push(&padded, &mut events);
        assert_eq!(delivered(&events), b"ab", "only the wire length is payload");
    }

    #[test]
    fn out_of_window_segments_are_dropped_without_abandoning() {
        let limits = Limits {
            max_window: 100,
            ..Limits::default()
        };
        let (mut reassembler, mut events) = opened(limits);
        reassembler.push(&data(0, &[b'x'; 200]), &mut events);
        events.clear();
        reassembler.push(&data(301, b"far ahead"), &mut events);
        reassembler.push(&data(99, b"far behind"), &mut events);
        reassembler.push(
            &segment(key(1), ISN + 1 + 5000, TCP_RST, b"", 0),
            &mut events,
        );
        assert!(events.is_empty(), "nothing delivered, closed or abandoned");
        assert_eq!(reassembler.counters().out_of_window, 3, "all three dropped");
        assert_eq!(reassembler.buffered_bytes(), 0, "nothing held for them");
        reassembler.push(&data(300, b"edge"), &mut events);
        reassembler.push(&data(100, b"x"), &mut events);
        assert_eq!(
            reassembler.counters().out_of_window,
            3,
            "the window's edges are inside"
        );
        reassembler.push(&data(200, b"y"), &mut events);
        assert_eq!(delivered(&events), b"y", "the flow goes on");
    }

    #[test]
    fn a_fin_closes_only_once_every_byte_before_it_arrived() {
        let (mut reassembler, mut events) = opened(Limits::default());
        reassembler.push(&data(0, b"ab"), &mut events);
        reassembler.push(&data(5, b"fgh"), &mut events);
        reassembler.push(&data(9, b"zz"), &mut events);
        let mut fin = data(4, b"ef");
        fin.flags |= TCP_FIN;
        reassembler.push(&fin, &mut events);
        assert_eq!(
            reassembler.buffered_bytes(),
            2 + SEGMENT_OVERHEAD,
            "bytes held past the FIN are dropped, the rest held once"
        );
        reassembler.push(&data(6, b"past the end"), &mut events);
        assert_eq!(
            reassembler.flows(),
            1,
            "the FIN waits on the hole before it"
        );
        assert!(
            !events
                .iter()
                .any(|event| matches!(event, FlowEvent::Closed { .. })),
            "not closed yet"
        );
        reassembler.push(&data(2, b"cd"), &mut events);
        assert_eq!(delivered(&events), b"abcdef", "the stream ends at the FIN");
        assert_eq!(
            events.last(),
            Some(&FlowEvent::Closed {
                key: key(1),
                at_ns: 0
            }),
            "closed after its last bytes"
        );
        assert_eq!(reassembler.counters().closed, 1, "counted");
        assert_eq!(reassembler.flows(), 0, "forgotten");
        assert_eq!(reassembler.buffered_bytes(), 0, "nothing held");
    }

    #[test]
    fn a_fin_alone_in_order_closes_at_once() {
        let (mut reassembler, mut events) = opened(Limits::default());
        reassembler.push(&data(0, b"ab"), &mut events);
        reassembler.push(
            &segment(key(1), ISN + 3, TCP_FIN | TCP_ACK, b"", 7),
            &mut events,
        );
        assert_eq!(
            events.last(),
            Some(&FlowEvent::Closed {
                key: key(1),
                at_ns: 7
            }),
            "every byte before the FIN was delivered"
        );
    }

    #[test]
    fn a_rst_closes_at_once_and_discards_held_bytes() {
        let (mut reassembler, mut events) = opened(Limits::default());
        reassembler.push(&data(4, b"held"), &mut events);
        reassembler.push(&segment(key(1), ISN + 1, TCP_RST, b"", 9), &mut events);
        assert_eq!(
            events,
            [FlowEvent::Closed {
                key: key(1),
                at_ns: 9
            }],
            "closed without delivering what was held"
        );
        assert_eq!(reassembler.flows(), 0, "forgotten");
        assert_eq!(reassembler.buffered_bytes(), 0, "held bytes released");
    }

    #[test]
    fn a_repeated_syn_is_ignored_and_a_new_isn_reopens_the_port() {
        let (mut reassembler, mut events) = opened(Limits::default());
        reassembler.push(&data(0, b"old"), &mut events);
        reassembler.push(&segment(key(1), ISN, TCP_SYN, b"", 1), &mut events);
        assert_eq!(
            reassembler.counters().retransmitted,
            1,
            "the same ISN is a resend"
        );
        assert_eq!(data_events(&events), 1, "and changes nothing");
        events.clear();
        reassembler.push(&segment(key(1), 77, TCP_SYN, b"", 2), &mut events);
        assert_eq!(
            events,
            [
                FlowEvent::Closed {
                    key: key(1),
                    at_ns: 2
                },
                FlowEvent::Opened {
                    key: key(1),
                    at_ns: 2
                }
            ],
            "the old connection closes and the new one opens"
        );
        events.clear();
        reassembler.push(&segment(key(1), 78, TCP_ACK, b"new", 3), &mut events);
        assert_eq!(
            delivered(&events),
            b"new",
            "the new stream starts after its own ISN"
        );
    }

    #[test]
    fn data_on_a_syn_starts_the_stream() {
        let mut reassembler = Reassembler::new(Limits::default());
        let mut events = Vec::new();
        reassembler.push(&segment(key(1), ISN, TCP_SYN, b"fast", 0), &mut events);
        reassembler.push(&data(4, b"open"), &mut events);
        assert_eq!(delivered(&events), b"fastopen", "SYN data comes first");
    }

    #[test]
    fn the_memory_limit_abandons_the_oldest_flows_first() {
        let limits = Limits {
            max_buffered_bytes: 3 * (10 + SEGMENT_OVERHEAD),
            ..Limits::default()
        };
        let mut reassembler = Reassembler::new(limits);
        let mut events = Vec::new();
        for port in 1..=4 {
            reassembler.push(&segment(key(port), ISN, TCP_SYN, b"", 0), &mut events);
        }
        events.clear();
        let ahead = |port| segment(key(port), ISN + 100, TCP_ACK, &[0; 10], 0);
        reassembler.push(&ahead(2), &mut events);
        reassembler.push(&ahead(3), &mut events);
        reassembler.push(&ahead(4), &mut events);
        assert!(events.is_empty(), "three segments fit");
        reassembler.push(&ahead(1), &mut events);
        assert_eq!(
            events,
            [FlowEvent::Abandoned {
                key: key(1),
                reason: AbandonReason::MemoryLimit
            }],
            "the oldest flow, the one asking for room, holds nothing and gives up"
        );
        events.clear();
        reassembler.push(&segment(key(5), ISN, TCP_SYN, b"", 0), &mut events);
        reassembler.push(&ahead(5), &mut events);
        assert_eq!(
            events[1..],
            [FlowEvent::Abandoned {
                key: key(2),
                reason: AbandonReason::MemoryLimit
            }],
            "the oldest flow holding bytes makes room for a newer one"
        );
        assert_eq!(reassembler.counters().abandoned_memory, 2, "counted");
        assert_eq!(
            reassembler.buffered_bytes(),
            3 * (10 + SEGMENT_OVERHEAD),
            "at the limit, not past it"
        );
        assert_eq!(reassembler.flows(), 3, "flows 3, 4 and 5 remain");
    }

    #[test]
    fn a_flood_of_tiny_segments_hits_the_byte_limit() {
        let limits = Limits {
            max_buffered_bytes: 100 * (1 + SEGMENT_OVERHEAD),
            ..Limits::default()
        };
        let (mut reassembler, mut events) = opened(limits);
        let mut offset = 2;
        while reassembler.flows() == 1 {
            reassembler.push(&data(offset, b"x"), &mut events);
            offset += 2;
            assert!(offset < 1_000, "the limit must stop the flood");
        }
        assert_eq!(
            reassembler.counters().out_of_order,
            100,
            "each 1-byte segment charged its overhead"
        );
        assert_eq!(
            events,
            [FlowEvent::Abandoned {
                key: key(1),
                reason: AbandonReason::MemoryLimit
            }],
            "the flooded flow is abandoned"
        );
        assert_eq!(reassembler.buffered_bytes(), 0, "and its memory released");
    }

    #[test]
    fn the_flow_limit_abandons_the_oldest_flow() {
        let limits = Limits {
            max_flows: 2,
            ..Limits::default()
        };
        let mut reassembler = Reassembler::new(limits);
        let mut events = Vec::new();
        for port in 1..=3 {
            reassembler.push(&segment(key(port), ISN, TCP_SYN, b"", 0), &mut events);
        }
        assert_eq!(
            events[2..],
            [
                FlowEvent::Abandoned {
                    key: key(1),
                    reason: AbandonReason::FlowLimit
                },
                FlowEvent::Opened {
                    key: key(3),
                    at_ns: 0
                }
            ],
            "the oldest flow gives its slot to the third"
        );
        assert_eq!(reassembler.flows(), 2, "at the limit");
        assert_eq!(reassembler.counters().abandoned_flows, 1, "counted");
    }

    #[test]
    fn segments_of_flows_without_a_syn_are_ignored() {
        let mut reassembler = Reassembler::new(Limits::default());
        let mut events = Vec::new();
        reassembler.push(&data(0, b"mid-stream"), &mut events);
        reassembler.push(
            &segment(key(1), ISN, TCP_SYN | TCP_ACK, b"", 0),
            &mut events,
        );
        reassembler.push(&segment(key(1), ISN, TCP_FIN, b"", 0), &mut events);
        assert!(events.is_empty(), "no event for an unknown flow");
        assert_eq!(
            reassembler.counters().mid_stream,
            1,
            "the data counted; a bare SYN+ACK or FIN lost nothing"
        );
        assert_eq!(reassembler.flows(), 0, "and none followed");
    }

    #[test]
    fn a_forgotten_flow_leaves_no_trace() {
        let (mut reassembler, mut events) = opened(Limits::default());
        reassembler.push(&data(4, b"held"), &mut events);
        reassembler.forget(&key(1));
        assert!(events.is_empty(), "no event when the consumer gives up");
        assert_eq!(reassembler.flows(), 0, "forgotten");
        assert_eq!(reassembler.buffered_bytes(), 0, "its held bytes released");
    }

    mod property {
        use proptest::{collection::vec, prelude::*, sample::Index};

        use super::*;

        /// A stream, its ISN and its segments: cut in consecutive pieces,
        /// plus resends of arbitrary ranges, plus a FIN alone, shuffled.
        fn shuffled_stream() -> impl Strategy<Value = (u32, Vec<u8>, Vec<(usize, usize, bool)>)> {
            (
                any::<u32>(),
                vec(any::<u8>(), 1..600),
                vec(1usize..80, 1..20),
                vec((any::<Index>(), 1usize..100), 0..10),
            )
                .prop_flat_map(|(isn, stream, lengths, resends)| {
                    let mut pieces = Vec::new();
                    let mut offset = 0;
                    for length in lengths.iter().cycle() {
                        if offset >= stream.len() {
                            break;
                        }
                        let length = (*length).min(stream.len() - offset);
                        pieces.push((offset, length, false));
                        offset += length;
                    }
                    for (at, length) in resends {
                        let at = at.index(stream.len());
                        pieces.push((at, length.min(stream.len() - at), false));
                    }
                    pieces.push((stream.len(), 0, true));
                    (Just(isn), Just(stream), Just(pieces).prop_shuffle())
                })
        }

        proptest! {
            #[test]
            fn any_order_and_duplication_rebuilds_the_stream((isn, stream, pieces) in shuffled_stream()) {
                let mut reassembler = Reassembler::new(Limits::default());
                let mut events = Vec::new();
                reassembler.push(&segment(key(1), isn, TCP_SYN, b"", 0), &mut events);
                for (offset, length, fin) in pieces {
                    let flags = if fin { TCP_FIN | TCP_ACK } else { TCP_ACK };
                    let seq = isn.wrapping_add(1).wrapping_add(offset as u32);
                    let payload = &stream[offset..offset + length];
                    reassembler.push(&segment(key(1), seq, flags, payload, 0), &mut events);
                }
                assert_eq!(delivered(&events), stream, "the original bytes, each once");
                assert_eq!(
                    events.last(),
                    Some(&FlowEvent::Closed { key: key(1), at_ns: 0 }),
                    "closed once the FIN's bytes all arrived"
                );
                assert_eq!(reassembler.flows(), 0, "forgotten once closed");
                assert_eq!(reassembler.buffered_bytes(), 0, "nothing left held");
            }
        }
    }
}
