//! The pools' shared arrays: their backends and their packed lookup
//! tables, written as `pool::plan` laid them out, beside the live ones.

use bluegreen_common::{MAGLEV_CHUNK, MaglevChunk, Pool, PoolBackend, ServiceKey, maglev_position};

use super::PinnedMaps;
use crate::{
    error::{Error, Result},
    pool::{
        PoolWrite,
        arena::{backend_run, table_run},
    },
};

impl PinnedMaps {
    /// The counter slots the backends of `pools` hold.
    pub fn backend_counter_slots(&self, pools: &[Pool]) -> Result<Vec<u32>> {
        let mut slots = Vec::new();
        for pool in pools {
            slots.extend(
                self.pool_backends(pool)?
                    .iter()
                    .map(|backend| backend.counter_slot),
            );
        }
        Ok(slots)
    }

    /// Writes a planned pool into the free space its plan took (never over
    /// a live pool), its new counter slots zeroed first, and names
    /// `service`'s VIP as its backends' (see [`PinnedMaps::map_backends`]).
    pub fn write_pool(&mut self, service: &ServiceKey, write: &PoolWrite) -> Result<()> {
        for &slot in &write.fresh_counters {
            self.reset_backend_traffic(slot)?;
        }
        for (index, backend) in backend_run(&write.pool).zip(&write.backends) {
            self.backends
                .set(index, backend, 0)
                .map_err(Error::ebpf("cannot write a pool's backends"))?;
        }
        for (index, entries) in
            table_run(&write.pool).zip(write.table.chunks(MAGLEV_CHUNK as usize))
        {
            let mut chunk: MaglevChunk = [0; MAGLEV_CHUNK as usize];
            chunk[..entries.len()].copy_from_slice(entries);
            self.maglev
                .set(index, chunk, 0)
                .map_err(Error::ebpf("cannot write a pool's lookup table"))?;
        }
        self.map_backends(service, &write.backends)
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

    /// How many entries of `pool`'s lookup table each of its backends
    /// owns, in pool order: its share of new flows.
    pub fn table_entries(&self, pool: &Pool) -> Result<Vec<u32>> {
        let mut entries = vec![0; pool.backend_count as usize];
        let mut left = pool.table_size as usize;
        for chunk in table_run(pool) {
            let chunk = self
                .maglev
                .get(&chunk, 0)
                .map_err(Error::ebpf("cannot read a pool's lookup table"))?;
            for &index in &chunk[..left.min(chunk.len())] {
                if let Some(count) = entries.get_mut(usize::from(index)) {
                    *count += 1;
                }
            }
            left = left.saturating_sub(chunk.len());
        }
        Ok(entries)
    }

    /// The backend `pool`'s table gives a flow hash, as the kernel picks
    /// it for a new flow; `None` when no backend takes new flows.
    pub fn table_backend(&self, pool: &Pool, hash: u32) -> Result<Option<PoolBackend>> {
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
