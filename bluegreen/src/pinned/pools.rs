//! The pools' shared arrays: their backends and their packed lookup
//! tables, written beside the live ones (see [`Arenas`]).

use bluegreen_common::{MAGLEV_CHUNK, MaglevChunk, Pool, PoolBackend, ServiceKey, maglev_position};

use super::PinnedMaps;
use crate::{
    error::{Error, Result},
    pool::arena::{Arenas, CounterSlots, backend_run},
};

impl PinnedMaps {
    /// The counter slot for a backend new to its pool, its counters
    /// zeroed (the slot may have been another backend's). The first one an
    /// operation needs reads which slots the live pools' backends hold.
    pub fn new_backend_counter(&mut self, arenas: &mut Arenas) -> Result<u32> {
        let counters = match &mut arenas.counters {
            Some(counters) => counters,
            None => {
                let mut counters = CounterSlots::default();
                for pool in &arenas.live_pools {
                    for backend in self.pool_backends(pool)? {
                        counters.reserve(backend.counter_slot);
                    }
                }
                arenas.counters.insert(counters)
            }
        };
        let slot = counters.allocate().ok_or(Error::PoolSpaceExhausted {
            what: "backend counters",
        })?;
        self.reset_backend_traffic(slot)?;
        Ok(slot)
    }

    /// Writes a pool's backends and lookup table into free space of the
    /// shared arrays (never over a live pool), names `service`'s VIP as
    /// the backends' (see [`PinnedMaps::map_backends`]) and returns
    /// the pool to put in the service's state. `table` holds indices into
    /// `backends`; an empty table is a pool that takes no new flow.
    pub fn write_pool(
        &mut self,
        arenas: &mut Arenas,
        service: &ServiceKey,
        backends: &[PoolBackend],
        table: &[u8],
    ) -> Result<Pool> {
        let size = u32::try_from(table.len()).expect("tables are small");
        let exhausted = |what: &'static str| Error::PoolSpaceExhausted { what };
        let backend_run = arenas
            .backends
            .allocate(backends.len() as u32)
            .ok_or_else(|| exhausted("backends"))?;
        let Some(table_run) = arenas.tables.allocate(size.div_ceil(MAGLEV_CHUNK)) else {
            arenas.backends.release(backend_run);
            return Err(exhausted("lookup tables"));
        };
        for (index, backend) in (backend_run.start..).zip(backends) {
            self.backends
                .set(index, backend, 0)
                .map_err(Error::ebpf("cannot write a pool's backends"))?;
        }
        for (index, entries) in (table_run.start..).zip(table.chunks(MAGLEV_CHUNK as usize)) {
            let mut chunk: MaglevChunk = [0; MAGLEV_CHUNK as usize];
            chunk[..entries.len()].copy_from_slice(entries);
            self.maglev
                .set(index, chunk, 0)
                .map_err(Error::ebpf("cannot write a pool's lookup table"))?;
        }
        self.map_backends(service, backends)?;
        Ok(Pool {
            table_chunk: table_run.start,
            table_size: size,
            first_backend: backend_run.start,
            backend_count: backends.len() as u32,
        })
    }

    /// A pool's backends, in pool order.
    pub fn pool_backends(&self, pool: &Pool) -> Result<Vec<PoolBackend>> {
        backend_run(pool)
            .map(|index| {
                self.backends
                    .get(&index, 0)
                    .map_err(Error::ebpf("cannot read a pool's backends"))
            })
            .collect()
    }

    /// The backend `pool`'s table gives a flow hash, as the kernel picks
    /// it for a new flow; `None` when no backend takes new flows.
    pub(super) fn table_backend(&self, pool: &Pool, hash: u32) -> Result<Option<PoolBackend>> {
        let Some((chunk, at)) = maglev_position(pool, hash) else {
            return Ok(None);
        };
        let chunk = self
            .maglev
            .get(&chunk, 0)
            .map_err(Error::ebpf("cannot read a pool's lookup table"))?;
        let index = pool.first_backend + u32::from(chunk[at]);
        Ok(Some(
            self.pool_backends(&Pool {
                first_backend: index,
                backend_count: 1,
                ..*pool
            })?[0],
        ))
    }
}
