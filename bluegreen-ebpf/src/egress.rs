//! TC egress: a backend's reply to a tracked flow leaves with the VIP as its
//! source, so the client only ever sees the address it connected to.

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::bpf_skb_load_bytes,
    programs::TcContext,
};
use bluegreen_common::{Endpoint, FlowEntry, IPPROTO_TCP, IPPROTO_UDP, PassReason, wire::TCP_RST};

use crate::{
    maps::{BG_BACKEND_VIPS, BG_FLOWS, settings},
    packet,
    parse::{AnyFrame, Direction, PacketBytes, Parsed, plain_ipv4},
    rewrite::rewrite_address,
    shadow::{self, Payload},
};

struct SkbPacket<'a>(&'a TcContext);

impl PacketBytes for SkbPacket<'_> {
    /// Direct packet access when the bytes are in the linear part (headers
    /// of ordinary replies are); `bpf_skb_load_bytes` otherwise, a helper
    /// call that costs more than the rest of the program.
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Result<T, PassReason> {
        match packet::read(self.0, offset) {
            Ok(value) => Ok(value),
            Err(_) => self.0.load(offset).map_err(|_| PassReason::Malformed),
        }
    }
}

impl Payload for SkbPacket<'_> {
    #[inline(always)]
    fn copy_out(&self, offset: usize, to: *mut u8, len: usize) -> Result<(), PassReason> {
        // SAFETY: `to` holds at least `len` bytes (see the trait). Not
        // `TcContext::load_bytes`: it clamps the length to the packet's,
        // and the verifier then no longer knows it is not zero.
        let failed = unsafe {
            bpf_skb_load_bytes(self.0.skb.skb.cast(), offset as u32, to.cast(), len as u32)
        };
        if failed == 0 {
            Ok(())
        } else {
            Err(PassReason::Malformed)
        }
    }
}

pub fn try_egress(ctx: &TcContext) -> Result<(), PassReason> {
    match plain_ipv4(ctx) {
        Some(plain) => restore_vip(ctx, &plain),
        None => restore_vip(ctx, &AnyFrame::parse(&SkbPacket(ctx))?),
    }
}

#[inline(always)]
fn restore_vip(ctx: &TcContext, frame: &impl Parsed) -> Result<(), PassReason> {
    let headers = frame.headers();
    let reply_key = frame.flow_key(Direction::ToClient)?;
    let (backend, backend_port) = (reply_key.server, reply_key.server_port);
    // SAFETY: the map is not preallocated, so the element stays intact for
    // the rest of this RCU section. Not copied: LLVM would copy it byte by
    // byte.
    let vip: &Endpoint =
        unsafe { BG_BACKEND_VIPS.get(reply_key.backend_key()) }.ok_or(PassReason::NotService)?;
    let mut flow_key = reply_key;
    flow_key.server = vip.addr;
    flow_key.server_port = vip.port;
    // SAFETY: LRU values may be recycled under us: the entry is copied at
    // once and checked below.
    let flow = *unsafe { BG_FLOWS.get(flow_key) }.ok_or(PassReason::NotService)?;
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { aya_ebpf::helpers::bpf_jiffies64() };
    let live = settings().is_some_and(|settings| settings.is_live(headers.proto, &flow, now));
    // A reply from a backend the flow no longer uses (after a forced switch)
    // or from an expired flow is not ours to rewrite.
    if !live || flow.backend.addr != backend || flow.backend.port != backend_port {
        return Err(PassReason::NotService);
    }

    // Addresses, port and the IPv4 header checksum are written directly,
    // which needs them in the linear part: ordinary replies have them
    // there, any other is pulled in first.
    let l4_check_at = headers.l4_checksum_offset();
    let rewritten_end = l4_check_at + 2;
    if ctx.data() + rewritten_end > ctx.data_end() {
        ctx.pull_data(rewritten_end as u32)
            .map_err(|_| PassReason::Malformed)?;
    }
    // A backend's reset (of an open connection, or answering a SYN to a
    // port with no listener) ends the flow as surely as the client's: left
    // open, it would count as live until the idle timeout and hold up
    // every drain. The flags share a 16-bit word with the data offset;
    // read before anything is rewritten, so that a packet never leaves
    // half-rewritten.
    let reset =
        headers.proto == IPPROTO_TCP && packet::read_field(ctx, headers.l4 + 12)?[1] & TCP_RST != 0;
    let delta = rewrite_address(
        ctx,
        &headers,
        headers.src_addr_offset(),
        &backend,
        &vip.addr,
    )?;
    packet::write_fields(ctx, headers.l4, [vip.port])?;
    if reset {
        // The copy checked above, written back whole and only over an
        // entry still there: through a pointer, a slot the LRU recycled
        // meanwhile would mark another flow. A lost race costs a refresh
        // of `last_seen` at most; a failed write leaves the flow as it was.
        let closing = FlowEntry { closing: 1, ..flow };
        let _ = BG_FLOWS.insert(flow_key, closing, BPF_EXIST as u64);
    }

    // The transport checksum by helper: only the kernel knows whether the
    // field holds a complete checksum or, for a reply sent from this host
    // with checksum offload, a pseudo-header sum that the port does not
    // enter.
    let mangled_zero = if headers.proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let failed = |_| PassReason::Malformed;
    ctx.l4_csum_replace(
        l4_check_at,
        0,
        delta as u64,
        BPF_F_PSEUDO_HDR as u64 | mangled_zero,
    )
    .map_err(failed)?;
    ctx.l4_csum_replace(
        l4_check_at,
        u16::from_ne_bytes(backend_port) as u64,
        u16::from_ne_bytes(vip.port) as u64,
        2 | mangled_zero,
    )
    .map_err(failed)?;
    shadow::reply(
        &SkbPacket(ctx),
        &headers,
        &flow_key,
        u32::from(flow.counter_slot),
    );
    Ok(())
}
