//! Each color's replicas: the pools, the shared arrays their backends and
//! consistent-hash lookup tables live in (`BG_BACKENDS`, `BG_MAGLEV`), and
//! the backend-to-VIP map (`BG_BACKEND_VIPS`) that takes a reply back to
//! its VIP, here because it holds every pool's backends and is sized so.

use crate::endpoint::Endpoint;

/// Backends one color of a service can have.
pub const MAX_POOL_BACKENDS: u32 = 256;

/// Entries of a pool's lookup table per element of `BG_MAGLEV`: the kernel
/// rounds array elements up to 8 bytes, so one-byte entries are packed.
pub const MAGLEV_CHUNK: u32 = 64;
/// Elements of `BG_MAGLEV`: room for every service's two tables twice over
/// (a changed table is written beside the live one before the flip), even
/// at the limit of services with one backend each (two chunks a table).
pub const MAGLEV_CHUNKS: u32 = 1 << 18;
/// Entries of `BG_BACKENDS`, shared by every pool the same way.
pub const MAX_BACKENDS: u32 = 1 << 17;

/// Key of the backend-to-VIP map: a backend as its replies name it (the
/// source of a reply), for the egress program to find the VIP to restore.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub proto: u8,
    pub family: u8,
}

/// Backends the backend-to-VIP map holds: every pool's, and those that
/// left a pool but may still have flows (kept until their service goes).
pub const MAX_BACKEND_VIPS: u32 = MAX_BACKENDS;

/// One element of `BG_BACKENDS`: a backend and its traffic counter slot.
/// The slot stays with the backend while it is in its pool, however often
/// the pool is rewritten, so its counters keep counting.
///
/// `endpoint.reserved` is userspace's record of the backend's weight and
/// runtime state: `[flags, operator weight]`, flags [`BACKEND_RECORDED`]
/// and any of [`BACKEND_DRAINED`], [`BACKEND_UNHEALTHY`],
/// [`BACKEND_LOADED`]. The table says that a backend takes no new flows,
/// not why, and a state rebuilt from the maps must not undrain it. The
/// kernel never reads it, and leaves it out of flow entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PoolBackend {
    pub endpoint: Endpoint,
    /// Index into `BG_BACKEND_TRAFFIC`.
    pub counter_slot: u32,
}

impl PoolBackend {
    /// The backend as a flow entry holds it: without the pool's record,
    /// which is the pool's business and would differ between a flow and a
    /// rewritten pool.
    #[inline(always)]
    pub fn flow_endpoint(&self) -> Endpoint {
        Endpoint {
            reserved: [0; 2],
            ..self.endpoint
        }
    }
}

/// Set in every record this version writes: zero, from an older writer,
/// records nothing.
pub const BACKEND_RECORDED: u8 = 0x80;
/// `bluegreen backend drain`.
pub const BACKEND_DRAINED: u8 = 0x01;
/// Failed its health checks (the daemon's).
pub const BACKEND_UNHEALTHY: u8 = 0x02;
/// Weighted by its queue depth (the daemon's `[service.load]`).
pub const BACKEND_LOADED: u8 = 0x04;

/// One element of `BG_MAGLEV`: [`MAGLEV_CHUNK`] table entries, each the
/// index of a backend within its pool.
pub type MaglevChunk = [u8; MAGLEV_CHUNK as usize];

/// One color's replicas: where its backends and its consistent-hash lookup
/// table live in the shared arrays. Userspace writes a changed pool beside
/// the live one and then replaces the service's state whole, so a packet
/// sees the old pool or the new one, never a half-written table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Pool {
    /// First element of the table in `BG_MAGLEV`.
    pub table_chunk: u32,
    /// Entries of the table: a prime at least 100 times the backends, so
    /// one backend leaving moves about 1/N of the new flows (Maglev); 0 when
    /// no backend takes new flows (all drained or unhealthy).
    pub table_size: u32,
    /// First backend in `BG_BACKENDS`; the table's entries index from it.
    pub first_backend: u32,
    /// Backends in `BG_BACKENDS` from `first_backend` on, drained ones
    /// included (their flows still need them; the table skips them).
    pub backend_count: u32,
}

/// Where the table entry for a flow hash lives in `BG_MAGLEV`: the element
/// and the byte within it. `None` for an empty pool.
#[inline(always)]
pub fn maglev_position(pool: &Pool, hash: u32) -> Option<(u32, usize)> {
    if pool.table_size == 0 {
        return None;
    }
    let entry = pool.table_chunk * MAGLEV_CHUNK + hash % pool.table_size;
    Some((entry / MAGLEV_CHUNK, (entry % MAGLEV_CHUNK) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<BackendKey>(), 20);
        assert_eq!(size_of::<Pool>(), 16);
        assert_eq!(size_of::<PoolBackend>(), 20 + 4);
    }
}
