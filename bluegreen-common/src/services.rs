//! The services map (`BG_SERVICES`) and the preview prefixes that go with
//! it: which VIPs are served, each one's two colors and which is active.
//! What a state's fields decide for a packet is in [`crate::rules`].

use crate::pools::Pool;

/// Capacity of the services map and of the counter slots that go with it.
pub const MAX_SERVICES: u32 = 16384;

pub const COLOR_BLUE: u8 = 0;
pub const COLOR_GREEN: u8 = 1;

/// Key of the services map: the virtual address clients connect to.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub vip: [u8; 16],
    pub port: [u8; 2],
    pub proto: u8,
    pub family: u8,
}

/// Value of the services map. Userspace always replaces it whole, so a packet
/// sees either the state before a switch or the state after it, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// Indexed by color: `pools[COLOR_BLUE]`, `pools[COLOR_GREEN]`.
    pub pools: [Pool; 2],
    /// Bumped by a forced switch: flows recorded under an older generation
    /// move to [`ServiceState::forced_color`] instead of staying on the one
    /// they started on.
    pub generation: u32,
    /// Index of this service's counters in the traffic map
    /// (`slot * 2 + color`).
    pub counter_slot: u32,
    pub active: u8,
    pub previous: u8,
    /// Percentage (0..=99) of new flows sent to the idle color: a weighted
    /// shift in progress. 0 sends every new flow to the active color.
    pub weight: u8,
    /// `SERVICE_HAS_PREVIEW`: look new flows' clients up in the preview
    /// prefixes (skipped otherwise, to keep the lookup off the common path).
    /// `SERVICE_FORCED_GREEN`: see [`ServiceState::forced_color`].
    pub flags: u8,
}

pub const SERVICE_HAS_PREVIEW: u8 = 1;
/// The last forced switch went to green (clear: to blue).
pub const SERVICE_FORCED_GREEN: u8 = 2;

impl ServiceState {
    pub fn pool(&self, color: u8) -> &Pool {
        &self.pools[(color & 1) as usize]
    }
}

/// Capacity of the preview-prefix trie, across all services.
pub const MAX_PREVIEW_PREFIXES: u32 = 4096;

/// Data of a preview-prefix trie key. The prefix length covers the slot,
/// family and reserved bytes (`PREVIEW_FIXED_BITS`) plus the CIDR's own
/// length, so one trie serves every service and both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreviewPrefix {
    /// The service's counter slot, big-endian so it is matched bit by bit.
    pub slot: [u8; 4],
    pub family: u8,
    pub reserved: [u8; 3],
    pub addr: [u8; 16],
}

pub const PREVIEW_FIXED_BITS: u32 = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<ServiceState>(), 2 * 16 + 4 + 4 + 4);
        assert_eq!(
            size_of::<PreviewPrefix>() as u32 * 8,
            PREVIEW_FIXED_BITS + 128
        );
    }
}
