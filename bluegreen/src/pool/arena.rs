//! Space in the two arrays every pool shares (`BG_MAGLEV` in chunks,
//! `BG_BACKENDS` in entries): which runs the live services use, and where a
//! new run fits. A changed pool is written to free space beside the live
//! one, and the old run is freed only once the service points elsewhere.
//! Backend counter slots are allocated one by one beside them.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Range,
};

use bluegreen_common::{MAGLEV_CHUNK, MAX_BACKEND_COUNTERS, Pool, ServiceState};

use crate::error::{Error, Result};

/// The runs in use in an array of `capacity` elements.
#[derive(Clone, Debug)]
pub struct Arena {
    capacity: u32,
    /// Start -> end of each run in use.
    used: BTreeMap<u32, u32>,
}

impl Arena {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            used: BTreeMap::new(),
        }
    }

    /// Marks `run` as used (a live pool's).
    pub fn reserve(&mut self, run: Range<u32>) {
        if !run.is_empty() {
            self.used.insert(run.start, run.end);
        }
    }

    pub fn release(&mut self, run: Range<u32>) {
        if self.used.get(&run.start) == Some(&run.end) {
            self.used.remove(&run.start);
        }
    }

    /// The first free run of `length` elements, now marked as used; `None`
    /// when no gap is that long.
    pub fn allocate(&mut self, length: u32) -> Option<Range<u32>> {
        if length == 0 {
            return Some(0..0);
        }
        let mut start = 0;
        for (&used_start, &used_end) in &self.used {
            if used_start >= start + length {
                break;
            }
            start = start.max(used_end);
        }
        let run = start..start.checked_add(length)?;
        if run.end > self.capacity {
            return None;
        }
        self.reserve(run.clone());
        Some(run)
    }
}

/// The chunks of `BG_MAGLEV` a pool's table occupies.
pub fn table_run(pool: &Pool) -> Range<u32> {
    pool.table_chunk..pool.table_chunk + pool.table_size.div_ceil(MAGLEV_CHUNK)
}

/// The entries of `BG_BACKENDS` a pool's backends occupy.
pub fn backend_run(pool: &Pool) -> Range<u32> {
    pool.first_backend..pool.first_backend + pool.backend_count
}

/// The backend counter slots live pools' backends hold. A slot is freed
/// only when the arenas are read afresh from the live pools, which every
/// operation does: a backend that left one pool of an operation may still
/// be in another, or in the same color's next pool.
#[derive(Clone, Debug, Default)]
pub struct CounterSlots {
    used: BTreeSet<u32>,
    /// No free slot below it: slots are never released, so each search
    /// goes on from where the last one stopped.
    searched_up_to: u32,
}

impl CounterSlots {
    pub fn reserve(&mut self, slot: u32) {
        self.used.insert(slot);
    }

    /// The lowest free slot, now marked as used; `None` when all are taken.
    pub fn allocate(&mut self) -> Option<u32> {
        let slot =
            (self.searched_up_to..MAX_BACKEND_COUNTERS).find(|slot| !self.used.contains(slot))?;
        self.used.insert(slot);
        self.searched_up_to = slot + 1;
        Some(slot)
    }
}

/// The arenas as the live services use them.
#[derive(Clone, Debug)]
pub struct Arenas {
    pub tables: Arena,
    pub backends: Arena,
    /// `None` until a backend new to its pool needs a slot: the slots in use
    /// are in the maps (each live pool's backends name theirs), and most
    /// operations (a switch of weights, a drain, a health change) add no
    /// backend, so they never read them.
    pub counters: Option<CounterSlots>,
    /// The pools whose backends' slots `counters` must hold.
    pub live_pools: Vec<Pool>,
}

impl Arenas {
    /// The arenas with the live pools' runs reserved.
    pub fn new<'a>(live: impl IntoIterator<Item = &'a ServiceState>) -> Self {
        let mut arenas = Arenas {
            tables: Arena::new(bluegreen_common::MAGLEV_CHUNKS),
            backends: Arena::new(bluegreen_common::MAX_BACKENDS),
            counters: None,
            live_pools: Vec::new(),
        };
        for state in live {
            for pool in &state.pools {
                arenas.tables.reserve(table_run(pool));
                arenas.backends.reserve(backend_run(pool));
                arenas.live_pools.push(*pool);
            }
        }
        arenas
    }

    /// A counter slot for a backend new to its pool. The first one an
    /// operation needs asks `slots_in_use` which slots the live pools'
    /// backends hold (the maps know): most operations never need one.
    pub fn new_counter_slot(
        &mut self,
        slots_in_use: &mut impl FnMut(&[Pool]) -> Result<Vec<u32>>,
    ) -> Result<u32> {
        let counters = match &mut self.counters {
            Some(counters) => counters,
            None => {
                let mut counters = CounterSlots::default();
                for slot in slots_in_use(&self.live_pools)? {
                    counters.reserve(slot);
                }
                self.counters.insert(counters)
            }
        };
        counters.allocate().ok_or(Error::PoolSpaceExhausted {
            what: "backend counters",
        })
    }

    /// Frees what `pool` used, once no service points to it any more.
    pub fn release(&mut self, pool: &Pool) {
        self.tables.release(table_run(pool));
        self.backends.release(backend_run(pool));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_go_to_the_first_gap_that_fits_and_never_overlap() {
        let mut arena = Arena::new(100);
        assert_eq!(arena.allocate(10), Some(0..10));
        assert_eq!(arena.allocate(20), Some(10..30));
        assert_eq!(arena.allocate(5), Some(30..35));
        arena.release(10..30);
        assert_eq!(arena.allocate(25), Some(35..60), "the gap is too short");
        assert_eq!(arena.allocate(15), Some(10..25), "the gap fits");
        assert_eq!(arena.allocate(41), None, "only 40 left at the end");
        assert_eq!(arena.allocate(40), Some(60..100));
        assert_eq!(arena.allocate(0), Some(0..0));
    }

    #[test]
    fn live_pools_are_reserved() {
        let state = ServiceState {
            pools: [
                Pool {
                    table_chunk: 0,
                    table_size: 101,
                    first_backend: 0,
                    backend_count: 1,
                },
                Pool {
                    table_chunk: 2,
                    table_size: 211,
                    first_backend: 1,
                    backend_count: 2,
                },
            ],
            ..Default::default()
        };
        let mut arenas = Arenas::new([&state]);
        assert_eq!(arenas.tables.allocate(1), Some(6..7));
        assert_eq!(arenas.backends.allocate(1), Some(3..4));
        arenas.release(&state.pools[0]);
        assert_eq!(arenas.tables.allocate(2), Some(0..2));
    }

    #[test]
    fn counter_slots_go_to_the_lowest_free_one() {
        let mut slots = CounterSlots::default();
        slots.reserve(0);
        slots.reserve(2);
        assert_eq!(slots.allocate(), Some(1));
        assert_eq!(slots.allocate(), Some(3));
        for _ in 4..MAX_BACKEND_COUNTERS {
            assert!(slots.allocate().is_some());
        }
        assert_eq!(slots.allocate(), None, "every slot is taken");
    }
}
