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
}

impl ChangeCause {
    pub const COUNT: usize = 4;
    pub const ALL: [ChangeCause; Self::COUNT] =
        [Self::Operator, Self::Shift, Self::AutoRollback, Self::Fleet];
    /// Causes before `Fleet`: the switch counters of pins from a version
    /// that had only these are carried over by `up` (see
    /// [`SwitchCounters::from_older`]).
    pub const OLDER_COUNT: usize = 3;

    /// Its name as the cause of a switch.
    pub fn switch_name(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Shift => "shift",
            Self::AutoRollback => "auto_rollback",
            Self::Fleet => "fleet",
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

/// `BG_SWITCHES` as a version with [`ChangeCause::OLDER_COUNT`] causes
/// pinned it: each cause's switches, then each one's rollbacks.
pub type OlderSwitchCounters = [u64; 2 * ChangeCause::OLDER_COUNT];

impl SwitchCounters {
    /// The counts of an older pin, the causes it did not have at 0.
    pub fn from_older(older: &OlderSwitchCounters) -> SwitchCounters {
        let (switches, rollbacks) = older.split_at(ChangeCause::OLDER_COUNT);
        let mut counters = SwitchCounters::default();
        counters.switches[..ChangeCause::OLDER_COUNT].copy_from_slice(switches);
        counters.rollbacks[..ChangeCause::OLDER_COUNT].copy_from_slice(rollbacks);
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
        let older: OlderSwitchCounters = [5, 2, 1, 3, 0, 1];
        let carried = SwitchCounters::from_older(&older);
        assert_eq!(carried.switches, [5, 2, 1, 0]);
        assert_eq!(carried.rollbacks, [3, 0, 1, 0]);
        assert_eq!(
            ChangeCause::ALL[ChangeCause::OLDER_COUNT],
            ChangeCause::Fleet
        );
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<TrafficCounters>(), 24);
        assert_eq!(size_of::<SwitchCounters>(), 2 * 4 * 8);
    }
}
