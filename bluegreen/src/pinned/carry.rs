//! Pinned maps whose layout grew without touching anything the programs
//! read, carried over by `up` instead of refused: the switch counters,
//! which gained causes (`fleet`, then `analysis`). The programs never read them, so `up`
//! moves the older map aside, lets the load pin one of today's layout and
//! fills it from the older one. Until then, commands run uncounted.

use aya::maps::{Array, Map, MapData, MapInfo};
use bluegreen_common::{SwitchCounters, map_names};

use super::{PinLayout, PinnedMaps};
use crate::error::{Error, Result};

impl PinLayout {
    /// Whether the switch counters pinned here have an older layout.
    pub(super) fn holds_older_switch_counters(&self) -> bool {
        MapInfo::from_pin(self.map(map_names::SWITCHES))
            .is_ok_and(|info| SwitchCounters::older_causes(info.value_size() as usize).is_some())
    }

    /// Where older switch counters wait, beside today's, from the moment
    /// `up` moves them out of the way until their counts are written again.
    pub fn older_switch_counters(&self) -> std::path::PathBuf {
        // bpffs refuses a dot in a name.
        self.dir().join(format!("{}_OLDER", map_names::SWITCHES))
    }

    /// Moves switch counters of an older layout aside (pinned under another
    /// name, counts kept), so that the load pins a map of today's layout.
    /// An `up` that fails after this leaves them there for the next one.
    pub fn set_older_switch_counters_aside(&self) -> Result<()> {
        if !self.holds_older_switch_counters() {
            return Ok(());
        }
        let path = self.map(map_names::SWITCHES);
        let aside = self.older_switch_counters();
        let cannot = || format!("cannot move {} aside to carry it over", path.display());
        // Pinned again under the other name, then unpinned here, rather
        // than renamed, which bpffs may refuse. Already aside (an earlier `up` failed
        // after this), the counts wait there.
        if !aside.exists() {
            let older = MapData::from_pin(&path).map_err(Error::ebpf(cannot()))?;
            older.pin(&aside).map_err(Error::ebpf(cannot()))?;
        }
        std::fs::remove_file(&path).map_err(Error::io(cannot()))
    }
}

impl PinnedMaps {
    /// Writes the counts of switch counters set aside by
    /// [`PinLayout::set_older_switch_counters_aside`] (now or by an earlier
    /// `up` that failed) into today's, then unpins the older map. Returns
    /// how many services' counts were carried over; `None` when nothing
    /// was set aside.
    pub fn carry_older_switch_counters(&mut self, layout: &PinLayout) -> Result<Option<usize>> {
        let path = layout.older_switch_counters();
        if !path.exists() {
            return Ok(None);
        }
        let cannot = || format!("cannot carry over {}", path.display());
        let data = MapData::from_pin(&path).map_err(Error::ebpf(cannot()))?;
        let value_size = data.info().map_err(Error::ebpf(cannot()))?.value_size() as usize;
        let carried = match SwitchCounters::older_causes(value_size) {
            // Each cause a version added is one more layout to read.
            Some(3) => self.carry::<6>(data, cannot)?,
            Some(4) => self.carry::<8>(data, cannot)?,
            _ => {
                return Err(Error::IncompatibleMap {
                    path: path.clone(),
                    detail: format!(
                        "switch counters of {value_size} bytes, a layout this bluegreen cannot carry over"
                    ),
                    iface: layout.iface().to_owned(),
                });
            }
        };
        std::fs::remove_file(&path).map_err(Error::io(cannot()))?;
        Ok(Some(carried))
    }

    /// Writes each service's counts of older switch counters whose values
    /// are `COUNTS` numbers; how many services had any.
    fn carry<const COUNTS: usize>(
        &mut self,
        data: MapData,
        cannot: impl Fn() -> String,
    ) -> Result<usize> {
        let older: Array<MapData, [u64; COUNTS]> =
            Array::try_from(Map::Array(data)).map_err(Error::ebpf(cannot()))?;
        let mut carried = 0;
        for slot in 0..older.len() {
            let counted = older.get(&slot, 0).map_err(Error::ebpf(cannot()))?;
            if counted.iter().any(|&count| count > 0) {
                self.set_switch_counters(slot, SwitchCounters::from_older(&counted))?;
                carried += 1;
            }
        }
        Ok(carried)
    }
}
