//! A color's replicas: its backends, each with a weight, spread over by
//! consistent hashing ([`maglev`]), and planned into free space of the
//! dataplane's shared arrays beside the live pool ([`arena`]) so that a
//! change is one flip. Planning only: the maps are written by `pinned`,
//! which is given the plan.

pub mod arena;
pub mod maglev;
mod spec;

use std::{collections::HashMap, net::SocketAddr};

use bluegreen_common::{Endpoint, MAGLEV_CHUNK, Pool, PoolBackend};

#[cfg(test)]
pub(crate) use spec::test_backend;
pub use spec::{BackendSpec, PoolSpec, WEIGHTS};

use crate::{
    endpoint::to_wire,
    error::{Error, Result},
};
use arena::Arenas;

/// A pool planned beside the live ones, for `PinnedMaps::write_pool` to
/// put in the maps as it is.
#[derive(Clone, Debug)]
pub struct PoolWrite {
    /// Where it goes: what the service's state points to once written.
    pub pool: Pool,
    /// In pool order, each with its record (see `PoolBackend`).
    pub backends: Vec<PoolBackend>,
    /// Indices into `backends`; empty for a pool that takes no new flow.
    pub table: Vec<u8>,
    /// Slots new to their backend: they may have been another backend's,
    /// so their counters are zeroed before the pool is written.
    pub fresh_counters: Vec<u32>,
}

/// Plans `spec` (a backend of table weight 0, drained or unhealthy, keeps
/// its flows and gets no new one) in free space of the shared arrays. The
/// table keeps the size of `live`, the color's current pool and its
/// backends, while that is still at least 100 entries per backend: with
/// the same size, a backend leaving moves only the flows it had. A backend
/// already in `live` keeps its counter slot, so its counters run on; a new
/// one gets a free slot (see [`Arenas::new_counter_slot`]).
pub fn plan(
    arenas: &mut Arenas,
    spec: &PoolSpec,
    live: Option<(&Pool, &[PoolBackend])>,
    mut slots_in_use: impl FnMut(&[Pool]) -> Result<Vec<u32>>,
) -> Result<PoolWrite> {
    let wire = spec.wire();
    let size = maglev::table_size_keeping(live.map(|(pool, _)| pool.table_size), wire.len());
    let weighted: Vec<(SocketAddr, u32)> = wire
        .iter()
        .map(|&(addr, weight, _)| (addr, weight))
        .collect();
    let table = maglev::build(&weighted, size);
    // By address: a live backend's record may differ from its new one.
    let kept: HashMap<_, _> = live
        .into_iter()
        .flat_map(|(_, backends)| backends)
        .map(|backend| {
            let Endpoint { addr, port, .. } = backend.endpoint;
            ((addr, port), backend.counter_slot)
        })
        .collect();
    let mut fresh_counters = Vec::new();
    let mut backends = Vec::with_capacity(wire.len());
    for &(addr, _, record) in &wire {
        let endpoint = Endpoint {
            reserved: record,
            ..to_wire(addr)
        };
        let counter_slot = match kept.get(&(endpoint.addr, endpoint.port)) {
            Some(&slot) => slot,
            None => {
                let slot = arenas.new_counter_slot(&mut slots_in_use)?;
                fresh_counters.push(slot);
                slot
            }
        };
        backends.push(PoolBackend {
            endpoint,
            counter_slot,
        });
    }
    let exhausted = |what: &'static str| Error::PoolSpaceExhausted { what };
    let backend_run = arenas
        .backends
        .allocate(backends.len() as u32)
        .ok_or_else(|| exhausted("backends"))?;
    let table_size = u32::try_from(table.len()).expect("tables are small");
    let Some(table_run) = arenas.tables.allocate(table_size.div_ceil(MAGLEV_CHUNK)) else {
        arenas.backends.release(backend_run);
        return Err(exhausted("lookup tables"));
    };
    Ok(PoolWrite {
        pool: Pool {
            table_chunk: table_run.start,
            table_size,
            first_backend: backend_run.start,
            backend_count: backends.len() as u32,
        },
        backends,
        table,
        fresh_counters,
    })
}
