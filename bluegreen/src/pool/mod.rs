//! A color's replicas: its backends, each with a weight, spread over by
//! consistent hashing ([`maglev`]), and written into the dataplane's shared
//! arrays beside the live pool ([`arena`]) so that a change is one flip.

pub mod arena;
pub mod maglev;

use std::net::SocketAddr;

use bluegreen_common::Pool;

use crate::{endpoint::to_wire, error::Result, pinned::PinnedMaps};
use arena::Arenas;

/// Writes the pool of `backends` (address and weight; weight 0 is a
/// drained backend: it keeps its flows and gets no new one) and returns
/// it. The table keeps the size of `live`, the color's current pool, while
/// that is still at least 100 entries per backend: with the same size, a
/// backend leaving moves only the flows it had.
pub fn write(
    maps: &mut PinnedMaps,
    arenas: &mut Arenas,
    backends: &[(SocketAddr, u32)],
    live: Option<&Pool>,
) -> Result<Pool> {
    let size = maglev::table_size_keeping(live.map(|pool| pool.table_size), backends.len());
    let table = maglev::build(backends, size);
    let endpoints: Vec<_> = backends.iter().map(|(addr, _)| to_wire(*addr)).collect();
    maps.write_pool(arenas, &endpoints, &table)
}
