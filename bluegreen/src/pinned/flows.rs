//! The flow table as userspace reads it, and the one change it makes to
//! it: moving the flows of a backend that left its pool.

use bluegreen_common::{Endpoint, FlowEntry, FlowKey, Pool, ServiceKey};

use aya::maps::MapError;

use super::{PinnedMaps, maps::BPF_EXIST};
use crate::error::{Error, Result};

impl PinnedMaps {
    /// Every flow entry; one evicted between listing its key and reading it
    /// is simply gone.
    pub fn flows(&self) -> impl Iterator<Item = (FlowKey, FlowEntry)> + '_ {
        self.flows.iter().filter_map(|entry| entry.ok())
    }

    /// Moves the live flows of `service` that the kernel keeps on `gone`
    /// (flows of `color` recorded under `generation`; older ones follow a
    /// forced switch on their next packet anyway) to the backend `pool`
    /// gives their hash; returns how many open connections moved (closing
    /// ones move too, for their last packets, but no client of theirs sees
    /// a reset). The kernel never re-picks
    /// the backend of a flow it knows, so without this they would keep
    /// reaching `gone`. With no backend left to take them, their entries
    /// are deleted: their next packet is then handled as a flow the table
    /// does not know. Replies of a moved flow find it as before: the new
    /// backend answers for the same VIP.
    pub fn rebind_flows(
        &mut self,
        service: &ServiceKey,
        color: u8,
        generation: u32,
        gone: &Endpoint,
        pool: &Pool,
    ) -> Result<u64> {
        let settings = self.settings()?;
        let now = crate::clock::now()?;
        // Expired entries are no connection at all: the kernel treats them
        // as absent, so they are neither moved nor counted.
        let stuck: Vec<(FlowKey, FlowEntry)> = self
            .flows()
            .filter(|(key, entry)| {
                settings.is_live(key.proto, entry, now)
                    && key.service_key() == *service
                    && on(entry, gone)
                    && entry.color == color
                    && entry.generation == generation
            })
            .collect();
        const WRITE: &str = "cannot rebind a flow of a removed backend";
        let mut moved = 0;
        for (key, _) in &stuck {
            // Read again: the kernel may have moved on since the listing (a
            // newer last_seen, a FIN) or evicted the flow; a stale copy
            // written back would undo that.
            let Ok(current) = self.flows.get(key, 0) else {
                continue;
            };
            if !on(&current, gone) {
                continue;
            }
            match self.table_backend(pool, bluegreen_common::flow_hash(key))? {
                // Only over the entry still there: never bring back one the
                // table evicted in between.
                Some(backend) => match self.flows.insert(
                    key,
                    FlowEntry {
                        backend: backend.flow_endpoint(),
                        backend_counter_slot: backend.counter_slot,
                        ..current
                    },
                    BPF_EXIST,
                ) {
                    Ok(()) => moved += u64::from(current.closing == 0),
                    Err(MapError::SyscallError(error))
                        if error.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(error) => return Err(Error::ebpf(WRITE)(error)),
                },
                None => {
                    let _ = self.flows.remove(key);
                }
            }
        }
        Ok(moved)
    }
}

/// Whether `entry` is kept on `backend`, by address and port: an entry a
/// program of an older version recorded may carry the pool's record bytes
/// beside them.
fn on(entry: &FlowEntry, backend: &Endpoint) -> bool {
    (entry.backend.addr, entry.backend.port) == (backend.addr, backend.port)
}
