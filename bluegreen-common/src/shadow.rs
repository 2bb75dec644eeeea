//! Shadow capture (`BG_SHADOW`, `BG_SHADOW_FLOWS`, `BG_SHADOW_RING`,
//! `BG_SHADOW_COUNTS`): which services mirror a sample of their new flows,
//! the flows sampled, and the records the programs hand to userspace, which
//! replays the clients' bytes to the idle color and compares its answers
//! with the live color's.

use crate::flows::FlowKey;

/// Capacity of the sampled-flows table: flows beyond it evict the least
/// recently used, whose later segments are then no longer captured.
pub const SHADOW_FLOW_CAPACITY: u32 = 65_536;

/// Size of the ring the programs write records into. At 100 % sampling of
/// a 10 Gbit/s service it holds about 13 ms of traffic; when userspace
/// falls behind, capture drops (counted), traffic does not wait.
pub const SHADOW_RING_BYTES: u32 = 16 << 20;

/// The most payload bytes one client segment record carries: a jumbo
/// frame's. A longer segment (only a GRO'd or multi-buffer frame can be) is
/// recorded with its true length, and userspace abandons the flow.
pub const MAX_SHADOW_PAYLOAD: usize = 9000;

/// The most payload bytes a reply record carries: enough for the status
/// line's start (`HTTP/1.1 200 `). Bodies of the live color never leave
/// the kernel.
pub const SHADOW_REPLY_PREFIX: usize = 16;

/// Granularity of the sample share: a flow is sampled when
/// [`shadow_sample_point`] of its hash is below the service's
/// [`ShadowSettings::sample_below`], which runs from 0 (off) to
/// `SHADOW_SAMPLE_SCALE` (every flow).
pub const SHADOW_SAMPLE_SCALE: u32 = 1 << 16;

/// Per counter slot (`BG_SHADOW`): whether and how much a service shadows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowSettings {
    /// 0: shadowing off, the only field a packet of a service that does not
    /// shadow ever reads.
    pub sample_below: u32,
    /// Tells this shadowing run's sampled flows from those of an earlier
    /// one, still in the table: those are not captured, since their first
    /// bytes went to a replayer that has gone.
    pub session: u32,
}

/// Value of the sampled-flows table, keyed by the client-to-VIP
/// [`FlowKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowFlow {
    pub session: u32,
}

/// A client's segment or datagram to the VIP, with up to
/// [`MAX_SHADOW_PAYLOAD`] bytes of its payload after the header.
pub const SHADOW_FROM_CLIENT: u8 = 1;
/// The live backend's reply, with up to [`SHADOW_REPLY_PREFIX`] bytes.
pub const SHADOW_FROM_LIVE: u8 = 2;

/// The header of every ring record; the payload bytes follow it.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowHeader {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub at_ns: u64,
    /// Client to VIP, for replies too.
    pub key: FlowKey,
    /// The TCP sequence number as on the wire (big-endian); zero for UDP.
    pub seq: [u8; 4],
    /// Payload length on the wire, which `captured` is short of when the
    /// record could not carry it all.
    pub wire_len: u32,
    pub captured: u16,
    /// [`SHADOW_FROM_CLIENT`] or [`SHADOW_FROM_LIVE`].
    pub kind: u8,
    /// The TCP flags byte (`wire::TCP_*`); zero for UDP.
    pub tcp_flags: u8,
    pub counter_slot: u16,
    pub reserved: [u8; 2],
}

pub const SHADOW_HEADER_LEN: usize = core::mem::size_of::<ShadowHeader>();

/// What the capture counts (`BG_SHADOW_COUNTS`, per CPU), by index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowCount {
    /// New flows chosen for shadowing.
    SampledFlows = 0,
    /// Records written, from clients and from the live color.
    ClientRecords = 1,
    LiveRecords = 2,
    /// Payload bytes copied from clients.
    ClientBytes = 3,
    /// Records lost because the ring was full: userspace fell behind.
    RingFull = 4,
    /// Client segments longer than a record carries.
    Truncated = 5,
    /// Segments whose lengths did not add up: not recorded.
    Malformed = 6,
    /// New flows not sampled because the sampled-flows table refused them.
    TableFull = 7,
}

impl ShadowCount {
    pub const COUNT: u32 = 8;
    pub const ALL: [ShadowCount; Self::COUNT as usize] = [
        Self::SampledFlows,
        Self::ClientRecords,
        Self::LiveRecords,
        Self::ClientBytes,
        Self::RingFull,
        Self::Truncated,
        Self::Malformed,
        Self::TableFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::SampledFlows => "sampled_flows",
            Self::ClientRecords => "client_records",
            Self::LiveRecords => "live_records",
            Self::ClientBytes => "client_bytes",
            Self::RingFull => "ring_full",
            Self::Truncated => "truncated",
            Self::Malformed => "malformed",
            Self::TableFull => "table_full",
        }
    }
}

/// Where a flow falls on the sampling scale, from its
/// [`flow_hash`](crate::flows::flow_hash). Not the hash itself: the weighted
/// split and the backend choice use its low end, and a sample taken from
/// the same bits would favour some backends.
#[inline(always)]
pub fn shadow_sample_point(hash: u32) -> u32 {
    hash.wrapping_mul(0x9e37_79b1) >> 16
}

/// [`ShadowSettings::sample_below`] for a share of new flows given in
/// hundredths of a percent (0..=10,000), rounded to the nearest point of
/// the scale; any share above zero samples something.
pub fn shadow_sample_below(basis_points: u32) -> u32 {
    let basis_points = basis_points.min(10_000);
    let below = (u64::from(basis_points) * u64::from(SHADOW_SAMPLE_SCALE) + 5_000) / 10_000;
    if basis_points > 0 {
        (below as u32).max(1)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ShadowSettings>(), 8);
        assert_eq!(size_of::<ShadowFlow>(), 4);
        assert_eq!(SHADOW_HEADER_LEN, 8 + 40 + 4 + 4 + 2 + 1 + 1 + 2 + 2);
    }

    #[test]
    fn shares_map_onto_the_scale() {
        assert_eq!(shadow_sample_below(0), 0, "0 % is off");
        assert_eq!(
            shadow_sample_below(10_000),
            SHADOW_SAMPLE_SCALE,
            "100 % takes every point"
        );
        assert_eq!(shadow_sample_below(500), 3277, "5 % of 65,536, rounded");
        assert_eq!(shadow_sample_below(1), 7, "0.01 % rounds to 7 points");
        assert!(
            shadow_sample_point(u32::MAX) < SHADOW_SAMPLE_SCALE,
            "every point is below 100 %'s bound"
        );
    }
}
