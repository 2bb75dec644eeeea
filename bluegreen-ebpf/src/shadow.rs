//! Shadow capture: copies of a sampled share of a service's new flows, for
//! the replayer in userspace (see `bluegreen_common::shadow`). Capture only
//! ever reads the packet: whatever happens here, the packet goes on as the
//! rest of the program decided, and a full ring costs a lost record, never
//! a wait.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};
use bluegreen_common::{
    FAMILY_IPV4, FlowKey, IPPROTO_TCP, MAX_SHADOW_PAYLOAD, PassReason, SHADOW_FROM_CLIENT,
    SHADOW_FROM_LIVE, SHADOW_HEADER_LEN, SHADOW_REPLY_PREFIX, ShadowCount, ShadowFlow,
    ShadowHeader, ShadowSettings, flow_hash, shadow_sample_point,
};

use crate::{
    maps::{BG_SHADOW, BG_SHADOW_FLOWS, BG_SHADOW_RING, count_shadow},
    parse::{Headers, PacketBytes},
};

/// A record put together before it is written to the ring in one piece:
/// too big for the stack, and a reservation in the ring must have a
/// constant size, while a record's is its payload's.
#[repr(C)]
pub struct Record {
    header: ShadowHeader,
    payload: [u8; MAX_SHADOW_PAYLOAD],
}

#[map]
static BG_SHADOW_SCRATCH: PerCpuArray<Record> = PerCpuArray::with_max_entries(1, 0);

/// A packet whose payload bytes can be copied out, beyond the linear part
/// too.
pub trait Payload: PacketBytes {
    /// Copies `len` bytes (1..=`MAX_SHADOW_PAYLOAD`) from `offset` on.
    fn copy_out(&self, offset: usize, to: *mut u8, len: usize) -> Result<(), PassReason>;
}

/// The service's shadowing, when it shadows: the one check a packet of a
/// service that does not pays.
#[inline(always)]
fn shadowing(counter_slot: u32) -> Option<&'static ShadowSettings> {
    let settings = BG_SHADOW.get(counter_slot)?;
    (settings.sample_below != 0).then_some(settings)
}

/// A new flow to the live color: sampled or not by its hash, and if it is,
/// its first packet recorded.
#[inline(always)]
pub fn start_flow(
    packet: &impl Payload,
    headers: &Headers,
    key: &FlowKey,
    counter_slot: u32,
    hash: u32,
) {
    let Some(settings) = shadowing(counter_slot) else {
        return;
    };
    if shadow_sample_point(hash) >= settings.sample_below {
        return;
    }
    // SAFETY: a plain-data value, compared at once.
    let known = unsafe { BG_SHADOW_FLOWS.get(key) };
    // A retransmitted SYN (or a client port reused in this run) is
    // recorded again, for the replayer to tell which, but it is the same
    // sampled flow.
    if !known.is_some_and(|flow| flow.session == settings.session) {
        let flow = ShadowFlow {
            session: settings.session,
        };
        if BG_SHADOW_FLOWS.insert(key, flow, 0).is_err() {
            count_shadow(ShadowCount::TableFull, 1);
            return;
        }
        count_shadow(ShadowCount::SampledFlows, 1);
    }
    record(packet, headers, key, counter_slot, SHADOW_FROM_CLIENT);
}

/// A later packet of a flow: recorded if this shadowing run sampled it.
#[inline(always)]
pub fn continue_flow(packet: &impl Payload, headers: &Headers, key: &FlowKey, counter_slot: u32) {
    if sampled(key, counter_slot) {
        record(packet, headers, key, counter_slot, SHADOW_FROM_CLIENT);
    }
}

/// The live backend's reply on a flow: recorded, status line only, if this
/// shadowing run sampled the flow. `key` is the client-to-VIP key.
#[inline(always)]
pub fn reply(packet: &impl Payload, headers: &Headers, key: &FlowKey, counter_slot: u32) {
    if sampled(key, counter_slot) {
        record(packet, headers, key, counter_slot, SHADOW_FROM_LIVE);
    }
}

#[inline(always)]
fn sampled(key: &FlowKey, counter_slot: u32) -> bool {
    let Some(settings) = shadowing(counter_slot) else {
        return false;
    };
    // The hash first: an unsampled flow of a shadowing service leaves
    // without a table lookup.
    if shadow_sample_point(flow_hash(key)) >= settings.sample_below {
        return false;
    }
    // SAFETY: a plain-data value, copied at once.
    let flow = unsafe { BG_SHADOW_FLOWS.get(key) };
    flow.is_some_and(|flow| flow.session == settings.session)
}

#[inline(always)]
fn record(packet: &impl Payload, headers: &Headers, key: &FlowKey, counter_slot: u32, kind: u8) {
    if let Err(reason) = try_record(packet, headers, key, counter_slot, kind) {
        count_shadow(reason, 1);
    }
}

#[inline(always)]
fn try_record(
    packet: &impl Payload,
    headers: &Headers,
    key: &FlowKey,
    counter_slot: u32,
    kind: u8,
) -> Result<(), ShadowCount> {
    let malformed = |_| ShadowCount::Malformed;
    // The sequence number, the data offset and the flags in one read:
    // read apart, LLVM merges their bounds checks into one the verifier
    // cannot follow.
    let (seq, header_len, tcp_flags) = if headers.proto == IPPROTO_TCP {
        let [s0, s1, s2, s3, _, _, _, _, data_offset, flags]: [u8; 10] =
            packet.read(headers.l4 + 4).map_err(malformed)?;
        let header_len = usize::from(data_offset >> 4) * 4;
        // Below the minimal header, the "payload" would start inside the
        // TCP header: bytes the live backend's stack drops, never data.
        if header_len < 20 {
            return Err(ShadowCount::Malformed);
        }
        ([s0, s1, s2, s3], header_len, flags)
    } else {
        ([0; 4], 8, 0)
    };
    let (payload_at, wire_len) = payload_span(packet, headers, header_len).map_err(malformed)?;
    let limit = if kind == SHADOW_FROM_CLIENT {
        MAX_SHADOW_PAYLOAD
    } else {
        SHADOW_REPLY_PREFIX
    };
    // Through `black_box`: LLVM would otherwise test `captured > 0` on
    // the lengths it came from, and the verifier, which tracks registers,
    // not arithmetic identities, would not know the copy's length is not 0.
    let captured = core::hint::black_box(wire_len.min(limit));
    // Index 0 of a one-entry array is always there; the check is the
    // verifier's.
    let Some(record) = BG_SHADOW_SCRATCH.get_ptr_mut(0) else {
        return Ok(());
    };
    if captured > 0 && captured <= MAX_SHADOW_PAYLOAD {
        // SAFETY: a per-CPU buffer that nothing else uses while this
        // program runs on this CPU.
        let to = unsafe { core::ptr::addr_of_mut!((*record).payload) }.cast::<u8>();
        packet
            .copy_out(payload_at, to, captured)
            .map_err(malformed)?;
    }
    // SAFETY: as above.
    unsafe {
        (*record).header = ShadowHeader {
            // SAFETY: a helper without arguments or preconditions.
            at_ns: bpf_ktime_get_ns(),
            key: *key,
            seq,
            wire_len: wire_len as u32,
            captured: captured as u16,
            kind,
            tcp_flags,
            counter_slot: counter_slot as u16,
            reserved: [0; 2],
        };
    }
    let len = SHADOW_HEADER_LEN + captured;
    // SAFETY: the record holds `SHADOW_HEADER_LEN + MAX_SHADOW_PAYLOAD`
    // bytes and `captured` is at most the latter.
    let bytes = unsafe { core::slice::from_raw_parts(record.cast::<u8>(), len) };
    BG_SHADOW_RING
        .output::<[u8]>(bytes, 0)
        .map_err(|_| ShadowCount::RingFull)?;
    if kind == SHADOW_FROM_CLIENT {
        count_shadow(ShadowCount::ClientRecords, 1);
        count_shadow(ShadowCount::ClientBytes, captured as u64);
        if captured < wire_len {
            count_shadow(ShadowCount::Truncated, 1);
        }
    } else {
        count_shadow(ShadowCount::LiveRecords, 1);
    }
    Ok(())
}

/// Where the transport payload starts and how long it is, from the IP and
/// transport headers' own lengths (`l4_header_len`): a short frame's
/// link-layer padding is not payload.
#[inline(always)]
fn payload_span(
    packet: &impl PacketBytes,
    headers: &Headers,
    l4_header_len: usize,
) -> Result<(usize, usize), PassReason> {
    let l3_end = if headers.family == FAMILY_IPV4 {
        let total: [u8; 2] = packet.read(headers.l3 + 2)?;
        headers.l3 + usize::from(u16::from_be_bytes(total))
    } else {
        let payload: [u8; 2] = packet.read(headers.l3 + 4)?;
        headers.l3 + 40 + usize::from(u16::from_be_bytes(payload))
    };
    let payload_at = headers.l4 + l4_header_len;
    if l3_end < payload_at {
        return Err(PassReason::Malformed);
    }
    Ok((payload_at, l3_end - payload_at))
}
