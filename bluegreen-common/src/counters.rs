//! What the programs and the CLI count: traffic per service color and per
//! backend (`BG_TRAFFIC`, `BG_BACKEND_TRAFFIC`), committed switches and
//! rollbacks (`BG_SWITCHES`), and packets passed untouched (`BG_PASSED`).

use crate::services::MAX_SERVICES;

/// Per-backend counter slots (`BG_BACKEND_TRAFFIC`): one per color of the
/// most services there can be, each with a one-backend pool. A slot is per
/// CPU, so this is what bounds the map's memory, not `MAX_BACKENDS`.
pub const MAX_BACKEND_COUNTERS: u32 = MAX_SERVICES * 2;

/// Index of a service's counters for one color in the traffic map.
#[inline(always)]
pub fn traffic_index(counter_slot: u32, color: u8) -> u32 {
    counter_slot * 2 + u32::from(color & 1)
}

/// Traffic counters of a service's color, or of one backend (per-CPU;
/// userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Who made a change of a service's colors: the index into
/// [`SwitchCounters`]' arrays.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChangeCause {
    /// `bluegreen switch` or `bluegreen rollback`.
    #[default]
    Operator = 0,
    /// `bluegreen shift`: its steps, and its retreat when a check fails.
    Shift = 1,
    /// The daemon, rolling back an active color that turned unhealthy.
    AutoRollback = 2,
    /// The daemon, applying a fleet change (`bluegreen fleet switch` or
    /// `rollback`, on every host at once).
    Fleet = 3,
    /// The daemon, rolling back an active color that failed a metric
    /// analysis in the window after its switch.
    Analysis = 4,
}

impl ChangeCause {
    pub const COUNT: usize = 5;
    pub const ALL: [ChangeCause; Self::COUNT] = [
        Self::Operator,
        Self::Shift,
        Self::AutoRollback,
        Self::Fleet,
        Self::Analysis,
    ];
    /// The fewest causes an older version counted (those before `Fleet`):
    /// switch counters pinned with this many or more, up to today's, are
    /// carried over by `up` (see [`SwitchCounters::from_older`]).
    pub const OLDEST_COUNT: usize = 3;

    /// Its name as the cause of a switch.
    pub fn switch_name(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Shift => "shift",
            Self::AutoRollback => "auto_rollback",
            Self::Fleet => "fleet",
            Self::Analysis => "analysis",
        }
    }

    /// Its name as the cause of a rollback: the daemon's rollbacks are
    /// named for why they happen, as the metrics always called them.
    pub fn rollback_name(self) -> &'static str {
        match self {
            Self::AutoRollback => "unhealthy",
            other => other.switch_name(),
        }
    }
}

/// Value of the switch-counter map (`BG_SWITCHES`, indexed by counter
/// slot): one service's committed changes, by [`ChangeCause`]. Only
/// userspace writes it, under the interface lock, at each change it
/// commits; the programs never read it. It lives in a pinned map rather
/// than in a process so that every command counts, whoever runs it, and
/// the counts outlive restarts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchCounters {
    /// Changes of the active color.
    pub switches: [u64; ChangeCause::COUNT],
    /// Returns to the previous color, or of a weighted shift's share to 0.
    pub rollbacks: [u64; ChangeCause::COUNT],
}

impl SwitchCounters {
    /// How many causes a `BG_SWITCHES` value of `value_size` bytes counts,
    /// when it is the layout of an older version that `up` carries over:
    /// each cause's switches, then each one's rollbacks.
    pub fn older_causes(value_size: usize) -> Option<usize> {
        let causes = value_size / (2 * core::mem::size_of::<u64>());
        (value_size.is_multiple_of(2 * core::mem::size_of::<u64>())
            && (ChangeCause::OLDEST_COUNT..ChangeCause::COUNT).contains(&causes))
        .then_some(causes)
    }

    /// The counts of an older pin's value (see
    /// [`SwitchCounters::older_causes`]), the causes it did not have at 0.
    pub fn from_older(older: &[u64]) -> SwitchCounters {
        let causes = (older.len() / 2).min(ChangeCause::COUNT);
        let (switches, rollbacks) = older.split_at(older.len() / 2);
        let mut counters = SwitchCounters::default();
        counters.switches[..causes].copy_from_slice(&switches[..causes]);
        counters.rollbacks[..causes].copy_from_slice(&rollbacks[..causes]);
        counters
    }

    /// Counts one committed change made by `cause`.
    pub fn count(&mut self, cause: ChangeCause, switched: bool, rolled_back: bool) {
        let at = cause as usize;
        self.switches[at] += u64::from(switched);
        self.rollbacks[at] += u64::from(rolled_back);
    }
}

/// Why a packet left the ingress program untouched. The value is the index
/// into the passed-packets counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassReason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp = 0,
    /// IP, but not addressed to any service VIP and port.
    NotService = 1,
    /// Truncated or inconsistent headers.
    Malformed = 2,
    /// An IP fragment: rewriting only the first one would break reassembly.
    Fragment = 3,
    /// A header we do not walk over: stacked VLAN tags, an IPv6 routing
    /// header, or more hop-by-hop/destination-options headers than we skip.
    /// (Other IPv6 next headers, such as AH, count as `NotService`.)
    Unsupported = 4,
    /// Addressed to a service but no flow state could be recorded.
    FlowTableFull = 5,
    /// A new flow for a color whose backends are all drained or unhealthy.
    NoBackend = 6,
}

impl PassReason {
    pub const COUNT: u32 = 7;
    pub const ALL: [PassReason; Self::COUNT as usize] = [
        Self::NotIp,
        Self::NotService,
        Self::Malformed,
        Self::Fragment,
        Self::Unsupported,
        Self::FlowTableFull,
        Self::NoBackend,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::NotIp => "not_ip",
            Self::NotService => "not_service",
            Self::Malformed => "malformed",
            Self::Fragment => "fragment",
            Self::Unsupported => "unsupported_header",
            Self::FlowTableFull => "flow_table_full",
            Self::NoBackend => "no_backend",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn older_switch_counters_keep_their_counts_by_cause() {
        let before_fleet = SwitchCounters::from_older(&[5, 2, 1, 3, 0, 1]);
        assert_eq!(before_fleet.switches, [5, 2, 1, 0, 0]);
        assert_eq!(before_fleet.rollbacks, [3, 0, 1, 0, 0]);
        let before_analysis = SwitchCounters::from_older(&[5, 2, 1, 7, 3, 0, 1, 6]);
        assert_eq!(before_analysis.switches, [5, 2, 1, 7, 0]);
        assert_eq!(before_analysis.rollbacks, [3, 0, 1, 6, 0]);
        assert_eq!(
            ChangeCause::ALL[ChangeCause::OLDEST_COUNT],
            ChangeCause::Fleet
        );
    }

    #[test]
    fn only_fewer_causes_than_today_are_an_older_layout() {
        assert_eq!(SwitchCounters::older_causes(48), Some(3));
        assert_eq!(SwitchCounters::older_causes(64), Some(4));
        assert_eq!(
            SwitchCounters::older_causes(size_of::<SwitchCounters>()),
            None
        );
        assert_eq!(SwitchCounters::older_causes(32), None);
        assert_eq!(SwitchCounters::older_causes(50), None);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<TrafficCounters>(), 24);
        assert_eq!(size_of::<SwitchCounters>(), 2 * ChangeCause::COUNT * 8);
    }
}
