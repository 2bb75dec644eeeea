//! XDP ingress: client -> VIP packets are rewritten to the backend of the
//! color their flow is pinned to.

use aya_ebpf::{
    helpers::{bpf_jiffies64, generated::bpf_xdp_load_bytes},
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use bluegreen_common::{
    Endpoint, FlowEntry, FlowKey, IPPROTO_TCP, IPPROTO_UDP, PassReason, Settings, TrafficCounters,
    checksum::{apply_delta, apply_udp_delta, port_delta},
    flow_hash, new_flow_color, traffic_index,
    wire::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

use crate::{
    maps::{
        BG_FLOWS, BG_SERVICES, count_traffic, current_generation, in_preview, pool_backend,
        port_has_service, settings, vip_may_match,
    },
    packet,
    parse::{AnyFrame, Direction, Headers, PacketBytes, Parsed, plain_ipv4},
    rewrite::rewrite_address,
    shadow::{self, Payload},
};

struct XdpPacket<'a>(&'a XdpContext);

impl XdpPacket<'_> {
    #[inline(always)]
    fn len(&self) -> u64 {
        (self.0.data_end() - self.0.data()) as u64
    }
}

impl PacketBytes for XdpPacket<'_> {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Result<T, PassReason> {
        packet::read(self.0, offset)
    }
}

impl Payload for XdpPacket<'_> {
    /// By helper: a multi-buffer frame's payload goes beyond the linear
    /// part.
    #[inline(always)]
    fn copy_out(&self, offset: usize, to: *mut u8, len: usize) -> Result<(), PassReason> {
        // SAFETY: `to` holds at least `len` bytes (the caller bounds it by
        // the buffer, and the verifier checks that it does).
        let failed =
            unsafe { bpf_xdp_load_bytes(self.0.ctx, offset as u32, to.cast(), len as u32) };
        if failed == 0 {
            Ok(())
        } else {
            Err(PassReason::Malformed)
        }
    }
}

pub fn try_ingress(ctx: &XdpContext) -> Result<(), PassReason> {
    let packet = XdpPacket(ctx);
    match plain_ipv4(ctx) {
        Some(plain) => steer(&packet, &plain),
        None => steer(&packet, &AnyFrame::parse(&packet)?),
    }
}

#[inline(always)]
fn steer(packet: &XdpPacket, frame: &impl Parsed) -> Result<(), PassReason> {
    let ctx = packet.0;
    let headers = frame.headers();
    let vip_port = frame.destination_port()?;
    if !port_has_service(vip_port) {
        return Err(PassReason::NotService);
    }
    // The destination alone before the whole key: most packets to a
    // service port but another address leave here.
    if !vip_may_match(&frame.destination()?, vip_port.to_be_bytes()) {
        return Err(PassReason::NotService);
    }
    let flow_key = frame.flow_key(Direction::ToServer)?;
    let tcp_flags: u8 = if headers.proto == IPPROTO_TCP {
        packet.read(headers.l4 + 13)?
    } else {
        0
    };
    let closing = tcp_flags & (TCP_FIN | TCP_RST) != 0;
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_jiffies64() };
    let settings = settings().ok_or(PassReason::NotService)?;

    // The fast path, a packet of a live flow whose service has not been
    // force-switched since: one flow-table lookup, no services lookup.
    let mut known = if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        None
    } else {
        live_flow(&flow_key, settings, now)
    };
    if let Some(entry) = &mut known
        && current_generation(entry.counter_slot) == Some(entry.generation)
    {
        return forward(packet, &headers, &flow_key, entry, now, closing);
    }

    // SAFETY: the services map is not preallocated, so the element stays
    // intact for the rest of this RCU section even if userspace replaces it.
    let service =
        unsafe { BG_SERVICES.get(flow_key.service_key()) }.ok_or(PassReason::NotService)?;
    // The same hash picks the color (weighted split) and the color's
    // backend, for a new or a rebound flow alike: a flow moved by a forced
    // switch lands where a new one would.
    let hash = flow_hash(&flow_key);
    let (color, closing_before, new_flow) = match known {
        // The generations mirror runs ahead of the services map while a
        // forced switch is written (it goes first): the flow stays put.
        Some(entry) if entry.generation == service.generation => {
            return forward(packet, &headers, &flow_key, entry, now, closing);
        }
        // A forced switch since the flow started: it moves where the force
        // sent it, even if a graceful switch has changed the active color
        // since, keeping its closing state if it has one.
        Some(entry) => (service.forced_color(), entry.closing, false),
        None => {
            let color = new_flow_color(service, hash, || {
                in_preview(service.counter_slot, flow_key.family, &flow_key.client)
            });
            (color, 0, true)
        }
    };
    let backend = pool_backend(service.pool(color), hash).ok_or(PassReason::NoBackend)?;
    let entry = FlowEntry {
        last_seen: now,
        backend: backend.flow_endpoint(),
        generation: service.generation,
        color,
        closing: closing_before | closing as u8,
        counter_slot: service.counter_slot as u16,
        backend_counter_slot: backend.counter_slot,
    };
    record_flow(ctx, &flow_key, &entry)?;
    // Only a flow that starts here is sampled, so that the replayer gets
    // it whole: a TCP flow from its SYN, and only to the live color (the
    // idle color's own flows need no copy sent to it).
    let starts = headers.proto != IPPROTO_TCP || tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if new_flow && starts && color == service.active {
        shadow::start_flow(packet, &headers, &flow_key, service.counter_slot, hash);
    }
    rewrite_destination(packet, &headers, &flow_key, &entry.backend)?;
    count(packet, &entry, new_flow);
    Ok(())
}

/// Rewrites a packet of a known flow to the backend it is pinned to.
#[inline(always)]
fn forward(
    packet: &XdpPacket,
    headers: &Headers,
    flow_key: &FlowKey,
    entry: &mut FlowEntry,
    now: u64,
    closing: bool,
) -> Result<(), PassReason> {
    entry.last_seen = now;
    if closing {
        entry.closing = 1;
    }
    shadow::continue_flow(packet, headers, flow_key, u32::from(entry.counter_slot));
    rewrite_destination(packet, headers, flow_key, &entry.backend)?;
    count(packet, entry, false);
    Ok(())
}

/// Counts the packet for its flow's color and for its backend.
#[inline(always)]
fn count(packet: &XdpPacket, entry: &FlowEntry, new_flow: bool) {
    let packets = TrafficCounters {
        packets: 1,
        bytes: packet.len(),
        new_flows: new_flow as u64,
    };
    count_traffic(
        traffic_index(u32::from(entry.counter_slot), entry.color),
        entry.backend_counter_slot,
        packets,
    );
}

/// The live flow entry for this packet, if any; a stale one counts as none.
#[inline(always)]
fn live_flow(key: &FlowKey, settings: &Settings, now: u64) -> Option<&'static mut FlowEntry> {
    let entry = BG_FLOWS.get_ptr_mut(key)?;
    // SAFETY: the pointer is into the map value; the fields written through
    // it on the hot path are single machine words, so a racing reader on
    // another CPU sees either the old or the new word.
    let entry = unsafe { &mut *entry };
    settings.is_live(key.proto, entry, now).then_some(entry)
}

/// Writes the whole flow entry, atomically replacing any old one. Replies
/// find it from their backend's VIP (`BG_BACKEND_VIPS`), so this is the
/// only write a new flow makes.
#[inline(always)]
fn record_flow(ctx: &XdpContext, key: &FlowKey, entry: &FlowEntry) -> Result<(), PassReason> {
    if BG_FLOWS.insert(key, entry, 0).is_err() {
        warn!(ctx, "flow table update failed; packet passed unchanged");
        return Err(PassReason::FlowTableFull);
    }
    Ok(())
}

#[inline(always)]
fn rewrite_destination(
    packet: &XdpPacket,
    headers: &Headers,
    key: &FlowKey,
    backend: &Endpoint,
) -> Result<(), PassReason> {
    let ctx = packet.0;
    // Read before anything is written: a packet is rewritten whole or not
    // at all.
    let l4_check_at = headers.l4_checksum_offset();
    let l4_check = packet::read_field(ctx, l4_check_at)?;
    let delta = rewrite_address(
        ctx,
        headers,
        headers.dst_addr_offset(),
        &key.server,
        &backend.addr,
    )?;
    let l4_delta = delta + port_delta(key.server_port, backend.port);
    let l4_check = if headers.proto == IPPROTO_UDP {
        apply_udp_delta(l4_check, l4_delta)
    } else {
        apply_delta(l4_check, l4_delta)
    };
    packet::write_fields(ctx, headers.l4 + 2, [backend.port])?;
    packet::write_fields(ctx, l4_check_at, [l4_check])
}
