//! A color's replicas: its backends, each with a weight, spread over by
//! consistent hashing ([`maglev`]), and written into the dataplane's shared
//! arrays beside the live pool ([`arena`]) so that a change is one flip.

pub mod arena;
pub mod maglev;

use std::{collections::HashMap, net::SocketAddr};

use bluegreen_common::{Pool, PoolBackend, ServiceKey};

use crate::{endpoint::to_wire, error::Result, pinned::PinnedMaps};
use arena::Arenas;

/// Writes the pool of `backends` (address and weight; weight 0 is a
/// drained backend: it keeps its flows and gets no new one) and returns
/// it. The table keeps the size of `live`, the color's current pool, while
/// that is still at least 100 entries per backend: with the same size, a
/// backend leaving moves only the flows it had. A backend already in
/// `live` keeps its counter slot, so its counters run on.
pub fn write(
    maps: &mut PinnedMaps,
    arenas: &mut Arenas,
    service: &ServiceKey,
    backends: &[(SocketAddr, u32)],
    live: Option<&Pool>,
) -> Result<Pool> {
    let size = maglev::table_size_keeping(live.map(|pool| pool.table_size), backends.len());
    let table = maglev::build(backends, size);
    let kept: HashMap<_, _> = match live {
        Some(live) => maps
            .pool_backends(live)?
            .into_iter()
            .map(|backend| (backend.endpoint, backend.counter_slot))
            .collect(),
        None => HashMap::new(),
    };
    let members = backends
        .iter()
        .map(|(addr, _)| {
            let endpoint = to_wire(*addr);
            let counter_slot = match kept.get(&endpoint) {
                Some(&slot) => slot,
                None => maps.new_backend_counter(arenas)?,
            };
            Ok(PoolBackend {
                endpoint,
                counter_slot,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    maps.write_pool(arenas, service, &members, &table)
}
