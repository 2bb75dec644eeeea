//! The shadow capture's maps, opened by shadowing alone (see
//! `map_names::SHADOW_MAPS`): the per-service switch that turns capture
//! on, the ring the records come through, and the capture's counters.

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use bluegreen_common::{ShadowCount, ShadowSettings, map_names};

use super::{PinLayout, contract::open_map};
use crate::error::{Error, Result};

pub struct ShadowMaps {
    settings: Array<MapData, ShadowSettings>,
    counts: PerCpuArray<MapData, u64>,
    ring: Option<RingBuf<MapData>>,
}

impl ShadowMaps {
    /// Fails with a hint to run `up` when the pins predate shadowing.
    pub fn open(layout: &PinLayout) -> Result<Self> {
        if let Some(name) = map_names::SHADOW_MAPS
            .iter()
            .find(|name| !layout.map(name).exists())
        {
            return Err(Error::ShadowMapsMissing {
                path: layout.map(name),
                iface: layout.iface().to_owned(),
            });
        }
        Ok(Self {
            settings: open_map(layout, map_names::SHADOW)?,
            counts: open_map(layout, map_names::SHADOW_COUNTS)?,
            ring: Some(open_map(layout, map_names::SHADOW_RING)?),
        })
    }

    /// The ring, to the one reader it may have: a ring has a single
    /// consumer position, and two readers would each take records meant
    /// for the other.
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }

    /// Turns capture on for a service's new flows (or, with
    /// `sample_below` 0, off: flows sampled before then are no longer
    /// captured either).
    pub fn set(&mut self, counter_slot: u32, settings: &ShadowSettings) -> Result<()> {
        self.settings
            .set(counter_slot, settings, 0)
            .map_err(Error::ebpf("cannot write the shadow settings"))
    }

    /// The capture's counters since `up`, summed over CPUs, by
    /// [`ShadowCount`].
    pub fn counts(&self) -> Result<[u64; ShadowCount::COUNT as usize]> {
        let mut counts = [0; ShadowCount::COUNT as usize];
        for what in ShadowCount::ALL {
            counts[what as usize] = self
                .counts
                .get(&(what as u32), 0)
                .map_err(Error::ebpf("cannot read the shadow counters"))?
                .iter()
                .sum();
        }
        Ok(counts)
    }
}
